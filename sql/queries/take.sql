-- Read a batch (per-group FIFO) and claim what can be sent now: see private.take_outbound.
select * from private.take_outbound(
  %(me)s, %(sessions)s::uuid[], %(rooms)s::integer[], %(held)s::bigint[], %(vt)s, %(qty)s,
  %(ttl)s
)
