-- One session's joined groups, as WhatsApp lists them now: upsert each (name, participants,
-- read-only flag and reason), and mark inactive the session's groups that are not listed any more.
with incoming as (
  select *
  from jsonb_to_recordset(%(groups)s::jsonb)
    as g(jid text, name text, participants jsonb, is_readonly boolean, readonly_reason text)
), upserted as (
  insert into public.whatsapp_groups as w
    (jid, name, session_id, participants, is_active, is_readonly, readonly_reason, last_synced)
  select jid, name, %(session)s, participants, true, is_readonly, readonly_reason, now()
  from incoming
  on conflict (jid) do update
  -- An unchanged participant list keeps its stored (compressed, out-of-line) value.
  set name = excluded.name, session_id = excluded.session_id,
      participants = case when w.participants = excluded.participants then w.participants
                          else excluded.participants end,
      is_active = true,
      is_readonly = excluded.is_readonly, readonly_reason = excluded.readonly_reason,
      last_synced = excluded.last_synced
  returning w.jid
), gone as (
  update public.whatsapp_groups w
  set is_active = false, last_synced = now()
  where w.session_id = %(session)s and w.is_active
    and w.jid not in (select jid from incoming)
  returning w.jid
)
select (select count(*) from upserted) as upserted, (select count(*) from gone) as deactivated
