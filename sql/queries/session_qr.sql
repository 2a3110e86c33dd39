update public.whatsapp_sessions
set status = 'scanning', qr_code = %(code)s, updated_at = now(),
    status_reason = 'waiting for the phone to scan the QR code'
where id = %(id)s and lease_owner = %(me)s
