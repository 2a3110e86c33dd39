-- A transient failure: back to pending with the error, and invisible until the backoff ends.
select private.outbound_retry(%(id)s::uuid, %(msg_id)s::bigint, %(error)s::text,
                              %(delay)s::double precision) as msg_id
