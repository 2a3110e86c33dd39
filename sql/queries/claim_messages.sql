-- Load what sending needs for a batch just read, and mark `sending` the messages that can go
-- now: their session is held here and connected, the group is open, and they have not expired.
-- `held_elsewhere`: the session is held by another live poller, which will send it.
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
), claimed as (
  update public.messages m
  set status = 'sending'
  from found f
  where m.id = f.message_id
    and f.status in ('pending', 'sending')
    and f.session_id = any(%(sessions)s::uuid[])
    and f.is_active and not f.is_readonly
    and f.created_at > now() - make_interval(secs => %(ttl)s)
  returning m.id
)
select f.*, f.message_id in (select id from claimed) as claimed
from found f
order by f.msg_id
