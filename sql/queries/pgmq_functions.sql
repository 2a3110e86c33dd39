-- The pgmq functions the poller calls, present in this database.
select p.proname::text
from pg_proc p
where p.pronamespace = 'pgmq'::regnamespace
  and p.proname = any(%(names)s::text[])
