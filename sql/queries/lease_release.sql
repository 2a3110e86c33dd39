update public.whatsapp_sessions
set lease_owner = null, lease_expires_at = null
where id = %(id)s and lease_owner = %(me)s
