-- Logged out: the keys are gone; the session waits until an admin pairs it again.
update public.whatsapp_sessions
set status = 'disconnected', status_reason = %(reason)s, qr_code = null,
    wa_jid = null, wa_lid = null, paired_at = null, updated_at = now()
where id = %(id)s and lease_owner = %(me)s
