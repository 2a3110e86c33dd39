-- Test helpers kept in schema `tests` (never exposed by the API), used by the files after this
-- one. This file commits on purpose, as basejump's test hooks do; the others roll back.
create extension if not exists pgtap with schema extensions;
set search_path = public, extensions;

create schema if not exists tests;
grant usage on schema tests to anon, authenticated, service_role, wa_poller;
-- pgTAP's functions must be callable by every persona the tests switch to.
grant usage on schema extensions to wa_poller;

create or replace function tests.create_user(p_email text, p_is_admin boolean default false)
returns uuid
language sql
as $$
  insert into auth.users (id, email, aud, role, raw_app_meta_data)
  values (gen_random_uuid(), p_email, 'authenticated', 'authenticated',
          case when p_is_admin then '{"role": "admin"}'::jsonb else '{}'::jsonb end)
  returning id
$$;

-- Act as PostgREST does for a signed-in user: role `authenticated` and the user's JWT claims.
create or replace function tests.authenticate_as(p_email text)
returns void
language plpgsql
as $$
declare
  u auth.users;
begin
  perform set_config('role', 'none', true);
  select * into u from auth.users where email = p_email;
  if not found then
    raise exception 'no test user %', p_email;
  end if;
  perform set_config('request.jwt.claims', json_build_object(
    'sub', u.id, 'role', 'authenticated', 'email', u.email,
    'app_metadata', u.raw_app_meta_data, 'user_metadata', u.raw_user_meta_data)::text, true);
  perform set_config('role', 'authenticated', true);
end
$$;

create or replace function tests.act_as_role(p_role text)
returns void
language plpgsql
as $$
begin
  perform set_config('role', 'none', true);
  perform set_config('request.jwt.claims', json_build_object('role', p_role)::text, true);
  perform set_config('role', p_role, true);
end
$$;

create or replace function tests.clear_authentication()
returns void
language plpgsql
as $$
begin
  perform set_config('role', 'none', true);
  perform set_config('request.jwt.claims', '', true);
end
$$;

-- The agency: Claims (employee@) is assigned Hasar Takip; Sales (sales@) is assigned Satış.
create or replace function tests.seed_agency()
returns void
language plpgsql
as $$
declare
  v_session uuid;
  v_claims uuid;
  v_sales uuid;
begin
  perform tests.create_user('admin@agency.test', true);
  perform tests.create_user('employee@agency.test');
  perform tests.create_user('sales@agency.test');
  insert into public.whatsapp_sessions (phone_number, status, qr_code, config)
  values ('905550000001', 'connected', 'qr-secret', '{"browser": "Chrome"}')
  returning id into v_session;
  insert into public.whatsapp_groups (jid, name, session_id, is_active, is_readonly, readonly_reason)
  values ('120363000000000001@g.us', 'Hasar Takip', v_session, true, false, null),
         ('120363000000000002@g.us', 'Satış', v_session, true, false, null),
         ('120363000000000003@g.us', 'Eski', v_session, false, false, null),
         ('120363000000000004@g.us', 'Duyuru', v_session, true, true, 'announce-only');
  insert into public.employee_groups (name) values ('Claims') returning id into v_claims;
  insert into public.employee_groups (name) values ('Sales') returning id into v_sales;
  insert into public.employee_group_members (employee_group_id, user_id)
  select v_claims, id from auth.users where email = 'employee@agency.test'
  union all
  select v_sales, id from auth.users where email = 'sales@agency.test';
  insert into public.group_assignments (group_jid, employee_group_id)
  values ('120363000000000001@g.us', v_claims), ('120363000000000003@g.us', v_claims),
         ('120363000000000004@g.us', v_claims), ('120363000000000002@g.us', v_sales);
end
$$;

grant execute on all functions in schema tests to anon, authenticated, service_role, wa_poller;

select plan(4);
select has_function('tests', 'authenticate_as', array['text']);
select has_function('tests', 'act_as_role', array['text']);
select has_function('tests', 'clear_authentication', array[]::name[]);
select has_function('tests', 'seed_agency', array[]::name[]);
select * from finish();
