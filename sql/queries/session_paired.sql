update public.whatsapp_sessions
set wa_jid = %(jid)s, wa_lid = coalesce(%(lid)s, wa_lid),
    phone_number = split_part(%(jid)s, '@', 1),
    paired_at = coalesce(paired_at, now()), qr_code = null, updated_at = now()
where id = %(id)s and lease_owner = %(me)s
