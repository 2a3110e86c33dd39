-- Retry and give back take arrays, each job with its own delay, like sent and fail: the poller's
-- outcome writer settles every outcome a batch of sends produced (sent, retry, fail, give back)
-- in one statement, so one round trip and one transaction, whatever mix the batch holds.

drop function private.outbound_retry(uuid, bigint, text, double precision);
drop function private.outbound_give_back(uuid[], bigint[], double precision);

-- Makes each job invisible until its own delay from now (0: visible at once), capped at an
-- hour like retime_outbound.
create function private.delay_outbound(p_msg_ids bigint[], p_delays double precision[])
returns setof bigint
language sql volatile
set search_path = pg_catalog, pg_temp
as $$
  update pgmq.q_whatsapp_outbound q
  set vt = clock_timestamp() + make_interval(secs => least(greatest(d.delay, 0), 3600))
  from unnest(p_msg_ids, p_delays) as d(msg_id, delay)
  where q.msg_id = d.msg_id
  returning q.msg_id
$$;

-- Transient failures: back to `pending` with the error, each job invisible until its backoff
-- ends (the attempt is counted).
create function private.outbound_retry(
  p_ids uuid[], p_msg_ids bigint[], p_errors text[], p_delays double precision[]
) returns setof bigint
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  update public.messages m
  set status = 'pending', error_log = r.error, attempts = m.attempts + 1
  from unnest(p_ids, p_errors) as r(id, error)
  where m.id = r.id and m.status in ('pending', 'sending');
  return query select private.delay_outbound(p_msg_ids, p_delays);
end
$$;

-- Gives jobs back without counting an attempt (session down, a retry or a shutdown ahead of
-- them): `pending` again, each visible to any poller after its delay.
create function private.outbound_give_back(
  p_ids uuid[], p_msg_ids bigint[], p_delays double precision[]
) returns setof bigint
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  update public.messages m
  set status = 'pending'
  where m.id = any(p_ids) and m.status = 'sending';
  return query select private.delay_outbound(p_msg_ids, p_delays);
end
$$;

-- New functions are executable by PUBLIC until revoked (see the function privileges migration).
revoke execute on function
  private.delay_outbound(bigint[], double precision[]),
  private.outbound_retry(uuid[], bigint[], text[], double precision[]),
  private.outbound_give_back(uuid[], bigint[], double precision[])
  from public, anon, authenticated, service_role;
grant execute on function
  private.outbound_retry(uuid[], bigint[], text[], double precision[]),
  private.outbound_give_back(uuid[], bigint[], double precision[])
  to wa_poller;
