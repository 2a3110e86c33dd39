-- Test helpers kept in schema `tests` (never exposed by the API), used by the files after this
-- one. This file commits on purpose, as basejump's test hooks do; the others roll back.
create extension if not exists pgtap with schema extensions;
set search_path = public, extensions;

create schema if not exists tests;
grant usage on schema tests to anon, authenticated, service_role, wa_poller;

create or replace function tests.create_user(p_email text, p_is_admin boolean default false,
                                             p_user_metadata jsonb default '{}')
returns uuid
language sql
as $$
  insert into auth.users (id, email, aud, role, raw_app_meta_data, raw_user_meta_data)
  values (gen_random_uuid(), p_email, 'authenticated', 'authenticated',
          case when p_is_admin then '{"role": "admin"}'::jsonb else '{}'::jsonb end, p_user_metadata)
  returning id
$$;

-- How many rows a table has, whoever may read them (run as the tables' owner): what "an admin
-- sees every row" compares with, whatever else the database holds (supabase/seed.sql).
create or replace function tests.row_count(p_table regclass)
returns integer
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  n integer;
begin
  execute format('select count(*) from %s', p_table) into n;
  return n;
end
$$;

-- The refusal a statement meets, with `p_echo` (the input it may quote) taken out: two
-- refusals that tell nothing apart compare equal.
create or replace function tests.refusal(p_sql text, p_echo text)
returns text
language plpgsql
as $$
declare
  v_state text;
  v_message text;
  v_detail text;
  v_hint text;
begin
  execute p_sql;
  return 'no error';
exception when others then
  get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
    v_detail = pg_exception_detail, v_hint = pg_exception_hint;
  return concat_ws(' | ', v_state, replace(v_message, p_echo, '<input>'), v_detail, v_hint);
end
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

-- Run one statement as the poller's role. pgTAP lives in `extensions`, which wa_poller may not
-- use (and `postgres` may not grant it), so the assertions run as the caller and only the
-- statement under test as wa_poller; an error inside an assertion also undoes the role change.
create or replace function tests.as_poller(p_sql text)
returns void
language plpgsql
as $$
begin
  perform set_config('role', 'wa_poller', true);
  execute p_sql;
  perform set_config('role', 'none', true);
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

-- The agency: Claims (employee@) is assigned Hasar Takip, Eski (inactive) and Duyuru
-- (read-only); Sales (sales@) is assigned Satış; Atanmamış is nobody's. impostor@ claims admin in
-- user_metadata only. Its names are its own: supabase/seed.sql may be applied too (`supabase
-- start`, `db reset`), with a team "Claims" of its own.
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
  perform tests.create_user('impostor@agency.test', false, '{"role": "admin"}');
  insert into public.whatsapp_sessions (phone_number, status, qr_code, config)
  values ('905559990001', 'connected', 'qr-secret', '{"browser": "Chrome"}')
  returning id into v_session;
  insert into public.whatsapp_groups (jid, name, session_id, is_active, is_readonly, readonly_reason)
  values ('120363000000000001@g.us', 'Hasar Takip', v_session, true, false, null),
         ('120363000000000002@g.us', 'Satış', v_session, true, false, null),
         ('120363000000000003@g.us', 'Eski', v_session, false, false, null),
         ('120363000000000004@g.us', 'Duyuru', v_session, true, true, 'announce-only'),
         ('120363000000000005@g.us', 'Atanmamış', v_session, true, false, null);
  insert into public.employee_groups (name) values ('Test Agency Claims') returning id into v_claims;
  insert into public.employee_groups (name) values ('Test Agency Sales') returning id into v_sales;
  insert into public.employee_group_members (employee_group_id, user_id)
  select v_claims, id from auth.users where email in ('employee@agency.test', 'impostor@agency.test')
  union all
  select v_sales, id from auth.users where email = 'sales@agency.test';
  insert into public.group_assignments (group_jid, employee_group_id)
  values ('120363000000000001@g.us', v_claims), ('120363000000000003@g.us', v_claims),
         ('120363000000000004@g.us', v_claims), ('120363000000000002@g.us', v_sales);
end
$$;

grant execute on all functions in schema tests to anon, authenticated, service_role, wa_poller;

select plan(7);
select has_function('tests', 'authenticate_as', array['text']);
select has_function('tests', 'act_as_role', array['text']);
select has_function('tests', 'clear_authentication', array[]::name[]);
select has_function('tests', 'seed_agency', array[]::name[]);
select has_function('tests', 'row_count', array['regclass']);
select has_function('tests', 'refusal', array['text', 'text']);
select has_function('tests', 'as_poller', array['text']);
select * from finish();
