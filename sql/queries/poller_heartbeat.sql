-- This poller is alive; pollers silent for ten lease periods are forgotten.
with beat as (
  insert into private.pollers (id, hostname, pid) values (%(me)s, %(hostname)s, %(pid)s)
  on conflict (id) do update set heartbeat_at = now()
)
delete from private.pollers where heartbeat_at < now() - make_interval(secs => 10 * %(ttl)s)
