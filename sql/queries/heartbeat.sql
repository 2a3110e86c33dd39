update public.whatsapp_sessions set updated_at = now() where id = any(%(ids)s::uuid[])
