-- Renew this poller's leases (and beat the sessions' heartbeat); returns what it still holds.
update public.whatsapp_sessions
set lease_expires_at = now() + make_interval(secs => %(ttl)s), updated_at = now()
where lease_owner = %(me)s
returning id, wa_jid, pair_requested_at
