-- Only the lease holder writes a session's status.
update public.whatsapp_sessions
set status = %(status)s::public.session_status, status_reason = %(reason)s, updated_at = now()
where id = %(id)s and lease_owner = %(me)s
