-- Who may see and change what. One policy per action and audience, named as a sentence.
-- Admin = JWT app_metadata.role = 'admin' (users cannot edit app_metadata; user_metadata is
-- never trusted). End users never write a message row or a status: only send_message does.

-- Helpers live in `private`, which the API does not expose. They are `stable` so a policy
-- evaluates them once per statement (wrapped in a sub-select), plpgsql so their plans are cached
-- (a SQL function with a SET clause is never inlined and is planned again on every call), and
-- the two that read membership are SECURITY DEFINER so policies do not recurse through RLS.
create function private.is_admin() returns boolean
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
  return coalesce((select auth.jwt()) -> 'app_metadata' ->> 'role', '') = 'admin';
end
$$;

create function private.my_employee_group_ids() returns setof uuid
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  return query
    select m.employee_group_id
    from public.employee_group_members m
    where m.user_id = (select auth.uid());
end
$$;

create function private.my_group_jids() returns setof varchar
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  return query
    select ga.group_jid
    from public.group_assignments ga
    join public.employee_group_members m on m.employee_group_id = ga.employee_group_id
    where m.user_id = (select auth.uid());
end
$$;

grant usage on schema private to authenticated;

alter table public.whatsapp_sessions enable row level security;
alter table public.whatsapp_groups enable row level security;
alter table public.employee_groups enable row level security;
alter table public.employee_group_members enable row level security;
alter table public.group_assignments enable row level security;
alter table public.messages enable row level security;

-- Reading: one policy per table for `authenticated`, so each row is checked once (admins read
-- everything; employees what their teams are assigned; nobody reads the sessions but admins).
create policy "Admins can read whatsapp sessions" on public.whatsapp_sessions
  for select to authenticated using ((select private.is_admin()));
create policy "Members can read their teams, admins every team" on public.employee_groups
  for select to authenticated
  using ((select private.is_admin()) or id in (select private.my_employee_group_ids()));
create policy "Users can read their own memberships, admins all" on public.employee_group_members
  for select to authenticated
  using ((select private.is_admin()) or user_id = (select auth.uid()));
create policy "Members can read their teams' group assignments, admins all" on public.group_assignments
  for select to authenticated
  using ((select private.is_admin()) or employee_group_id in (select private.my_employee_group_ids()));
create policy "Members can read groups assigned to their teams, admins all" on public.whatsapp_groups
  for select to authenticated
  using ((select private.is_admin()) or jid in (select private.my_group_jids()));
create policy "Members can read messages of groups assigned to their teams, admins all" on public.messages
  for select to authenticated
  using ((select private.is_admin()) or group_jid in (select private.my_group_jids()));

-- Admins manage everything except the message log, which nobody writes but send_message.
do $$
declare
  t text;
begin
  foreach t in array array['whatsapp_sessions', 'whatsapp_groups', 'employee_groups',
                           'employee_group_members', 'group_assignments'] loop
    execute format('create policy %I on public.%I for insert to authenticated with check ((select private.is_admin()))',
                   'Admins can create ' || replace(t, '_', ' '), t);
    execute format('create policy %I on public.%I for update to authenticated using ((select private.is_admin())) with check ((select private.is_admin()))',
                   'Admins can update ' || replace(t, '_', ' '), t);
    execute format('create policy %I on public.%I for delete to authenticated using ((select private.is_admin()))',
                   'Admins can delete ' || replace(t, '_', ' '), t);
  end loop;
end
$$;

-- Privileges: Supabase grants everything on new tables to the API roles; take back what RLS
-- alone should not be trusted with.
revoke all on all tables in schema public from anon;
revoke truncate, references, trigger on all tables in schema public from authenticated;
revoke insert, update, delete on public.messages from authenticated;
