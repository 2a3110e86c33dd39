-- The project's queue functions the poller calls, by signature, that this database lacks or
-- that the poller may not execute.
select f.signature
from unnest(%(signatures)s::text[]) as f(signature)
where to_regprocedure(f.signature) is null
   or not has_function_privilege(to_regprocedure(f.signature), 'execute')
