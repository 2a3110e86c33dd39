-- The synced participants of the groups whose jobs mention someone (poller/outgoing.py picks
-- the group's addressing from them).
select g.jid::text as jid, g.participants
from public.whatsapp_groups g
where g.jid = any(%(jids)s::text[])
