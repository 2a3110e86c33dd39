-- wa_poller: the role the poller daemon connects as. Not a superuser and no BYPASSRLS: it takes
-- and acknowledges jobs through the project's functions, writes statuses, sessions and groups,
-- and nothing else.
-- Created without LOGIN; `wa-poller db bootstrap --poller-password` (or an operator) enables it.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'wa_poller') then
    create role wa_poller nologin noinherit;
  end if;
end
$$;

grant usage on schema public to wa_poller;
grant select on public.messages, public.whatsapp_sessions, public.whatsapp_groups to wa_poller;
grant update (status, wa_message_id, error_log, attempts, sent_at, delivered_at, read_at)
  on public.messages to wa_poller;
grant update (phone_number, status, status_reason, qr_code, config, updated_at)
  on public.whatsapp_sessions to wa_poller;
grant insert on public.whatsapp_groups to wa_poller;
grant update (name, session_id, participants, is_active, is_readonly, readonly_reason, last_synced)
  on public.whatsapp_groups to wa_poller;

create policy "The poller can read messages" on public.messages
  for select to wa_poller using (true);
create policy "The poller can update message statuses" on public.messages
  for update to wa_poller using (true) with check (true);
create policy "The poller can read sessions" on public.whatsapp_sessions
  for select to wa_poller using (true);
create policy "The poller can update sessions" on public.whatsapp_sessions
  for update to wa_poller using (true) with check (true);
create policy "The poller can read groups" on public.whatsapp_groups
  for select to wa_poller using (true);
create policy "The poller can create groups" on public.whatsapp_groups
  for insert to wa_poller with check (true);
create policy "The poller can update groups" on public.whatsapp_groups
  for update to wa_poller using (true) with check (true);

-- The queue is changed only through the project's functions in `private` (one per transition,
-- SECURITY DEFINER, see 20261127200000_outbound_take.sql): the poller has no privilege on any
-- pgmq object, so it can neither rewrite nor drop a job, nor lock the queue.

-- The role running the migrations (`postgres` on Supabase) may act as the poller: Studio's SQL
-- editor and `supabase test db` check what the poller can do with `set role wa_poller`.
grant wa_poller to current_user;
