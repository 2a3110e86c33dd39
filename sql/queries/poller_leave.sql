-- A clean stop: hand every session back at once and leave the registry.
with released as (
  update public.whatsapp_sessions
  set lease_owner = null, lease_expires_at = null
  where lease_owner = %(me)s
)
delete from private.pollers where id = %(me)s
