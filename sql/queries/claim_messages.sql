-- Load what sending needs for a batch just read, and mark `sending` the messages that can go
-- now: their session is held here and connected, the group is open, they have not expired, and
-- no earlier message of their group is in the queue outside what this poller holds.
-- `held_elsewhere`: the session is held by another live poller, which will send it.
-- `behind`: an earlier message of the group is still queued elsewhere (two pollers' reads can
-- race inside read_grouped_rr); it must go first, so this one is handed back.
with batch as (
  select * from unnest(%(msg_ids)s::bigint[], %(message_ids)s::uuid[]) as b(msg_id, message_id)
), found as (
  select b.msg_id, b.message_id, m.group_jid, m.content, m.status::text as status, m.attempts,
         m.created_at, g.session_id, g.is_active, g.is_readonly, g.readonly_reason,
         coalesce(s.lease_owner <> %(me)s and s.lease_expires_at > now(), false) as held_elsewhere
  from batch b
  left join public.messages m on m.id = b.message_id
  left join public.whatsapp_groups g on g.jid = m.group_jid
  left join public.whatsapp_sessions s on s.id = g.session_id
), earliest as (
  select q.headers ->> 'x-pgmq-group' as group_jid, min(q.msg_id) as msg_id
  from pgmq.q_whatsapp_outbound q
  where q.headers ->> 'x-pgmq-group' in (select group_jid from found)
    and q.msg_id <> all(%(msg_ids)s::bigint[])
    and q.msg_id <> all(%(held)s::bigint[])
  group by 1
), checked as (
  select f.*, coalesce(e.msg_id < f.msg_id, false) as behind
  from found f left join earliest e on e.group_jid = f.group_jid
), claimed as (
  update public.messages m
  set status = 'sending'
  from checked f
  where m.id = f.message_id
    and f.status in ('pending', 'sending')
    and f.session_id = any(%(sessions)s::uuid[])
    and not f.held_elsewhere and not f.behind
    and f.is_active and not f.is_readonly
    and f.created_at > now() - make_interval(secs => %(ttl)s)
  returning m.id
)
select f.*, f.message_id in (select id from claimed) as claimed
from checked f
order by f.msg_id
