-- Who may execute the functions in `private`, in one place. PostgreSQL grants EXECUTE on every
-- new function to PUBLIC, and a per-schema default privilege cannot take that back; so every
-- grant is revoked here and exactly what each role calls is granted. A function added later
-- stays its owner's until a migration grants it. tests/test_structure.py pins the result.
revoke execute on all functions in schema private from public, anon, authenticated, service_role;

-- The messages table's check calls it, whoever writes a row; it only classifies text.
grant execute on function private.is_blank(text) to public;

-- The RLS policies' helpers, evaluated as the signed-in user.
grant execute on function private.is_admin(), private.my_employee_group_ids(), private.my_group_jids()
  to authenticated;

-- The body of the RPC, which public.send_message calls as its caller.
grant execute on function private.send_message(text, text, uuid) to authenticated, service_role;

-- The poller's transitions of the queue and its wake-up, and nothing else.
grant execute on function
  private.take_outbound(text, uuid[], integer[], bigint[], integer, integer, double precision),
  private.outbound_sent(uuid[], bigint[], text[], timestamptz[]),
  private.outbound_retry(uuid, bigint, text, double precision),
  private.outbound_fail(uuid[], bigint[], text[]),
  private.outbound_give_back(uuid[], bigint[], double precision),
  private.outbound_extend(bigint[], double precision),
  private.arm_outbound_listener()
  to wa_poller;
