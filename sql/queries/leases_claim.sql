-- Take up to `count` sessions that nobody holds or whose lease has expired.
update public.whatsapp_sessions s
set lease_owner = %(me)s, lease_expires_at = now() + make_interval(secs => %(ttl)s)
from (
  select id from public.whatsapp_sessions
  where lease_owner is null or lease_expires_at < now()
  order by created_at, id
  limit %(count)s
  for update skip locked
) free
where s.id = free.id
returning s.id, s.wa_jid, s.pair_requested_at
