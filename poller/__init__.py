"""Supabase-native WhatsApp outbox: database bootstrap and the poller daemon."""
