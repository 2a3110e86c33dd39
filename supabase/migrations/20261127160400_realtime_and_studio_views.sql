-- Status changes reach the browser through Supabase Realtime, which reads this publication.
do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
  if not exists (select 1 from pg_publication_tables
                 where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'messages') then
    alter publication supabase_realtime add table public.messages;
  end if;
end
$$;

-- Views for admins in Supabase Studio. security_invoker: they show what the viewer may read.
-- Not granted to the API roles: the queue tables behind them are not theirs to read.
create view public.whatsapp_sessions_overview with (security_invoker = true) as
select
  s.id,
  s.phone_number,
  s.status,
  s.status_reason,
  s.updated_at as last_heartbeat,
  now() - s.updated_at as heartbeat_age,
  coalesce(q.queue_depth, 0) as queue_depth,
  q.oldest_enqueued_at,
  coalesce(m.pending, 0) as pending_messages,
  coalesce(m.failed, 0) as failed_messages,
  (select count(*) from public.whatsapp_groups g where g.session_id = s.id and g.is_active) as active_groups
from public.whatsapp_sessions s
left join lateral (
  select count(*) as queue_depth, min(qm.enqueued_at) as oldest_enqueued_at
  from pgmq.q_whatsapp_outbound qm
  join public.whatsapp_groups g on g.jid = qm.headers ->> 'x-pgmq-group'
  where g.session_id = s.id
) q on true
left join lateral (
  select count(*) filter (where msg.status in ('pending', 'sending')) as pending,
         count(*) filter (where msg.status = 'failed') as failed
  from public.messages msg
  join public.whatsapp_groups g on g.jid = msg.group_jid
  where g.session_id = s.id and msg.status in ('pending', 'sending', 'failed')
) m on true;

create view public.failed_messages with (security_invoker = true) as
select
  m.id,
  m.created_at,
  m.updated_at as failed_at,
  m.group_jid,
  g.name as group_name,
  g.session_id,
  m.sender_id,
  m.attempts,
  m.error_log,
  m.content
from public.messages m
join public.whatsapp_groups g on g.jid = m.group_jid
where m.status = 'failed';

revoke all on public.whatsapp_sessions_overview, public.failed_messages from anon, authenticated;
grant select on public.whatsapp_sessions_overview, public.failed_messages to service_role;
grant usage on schema pgmq to service_role;
grant select on pgmq.q_whatsapp_outbound to service_role;
