-- wa_poller: the role the poller daemon connects as. Not a superuser and no BYPASSRLS: it reads
-- and acknowledges the queue, writes statuses, sessions and groups, and nothing else.
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

-- The queue: read (plain and grouped), extend visibility, archive, delete, metrics.
grant usage on schema pgmq to wa_poller;
-- Only the lease columns: the poller can never rewrite a queued payload or its group header.
grant select, delete on pgmq.q_whatsapp_outbound to wa_poller;
grant update (vt, read_ct, last_read_at) on pgmq.q_whatsapp_outbound to wa_poller;
-- pgmq.archive runs as its caller and moves the row into the archive table.
grant select, insert on pgmq.a_whatsapp_outbound to wa_poller;
grant select on pgmq.q_whatsapp_outbound_msg_id_seq, pgmq.meta to wa_poller;
do $$
declare
  f regprocedure;
begin
  for f in
    select p.oid::regprocedure from pg_proc p
    where p.pronamespace = 'pgmq'::regnamespace
      and p.proname in ('read', 'read_with_poll', 'read_grouped', 'read_grouped_with_poll',
                        'read_grouped_rr', 'read_grouped_rr_with_poll', 'read_grouped_head',
                        'read_grouped_head_with_poll', 'archive', 'delete', 'set_vt', 'metrics',
                        'format_table_name')
  loop
    execute format('grant execute on function %s to wa_poller', f);
  end loop;
end
$$;
