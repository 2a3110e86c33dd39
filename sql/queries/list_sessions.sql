select id, phone_number from public.whatsapp_sessions order by created_at
