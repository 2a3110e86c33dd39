begin;
set local search_path = public, extensions;
select plan(12);

select tables_are('public', array['whatsapp_sessions', 'whatsapp_groups', 'group_assignments',
  'messages', 'employee_groups', 'employee_group_members', 'message_receipts']);
select is(
  (select array_agg(relname::text order by relname) from pg_class
   where relnamespace = 'public'::regnamespace and relkind = 'r' and not relrowsecurity),
  null, 'every table in public has row level security on');
select col_is_pk('public', 'whatsapp_groups', 'jid', 'groups are keyed by their WhatsApp JID');
select index_is_unique('public', 'messages', 'messages_sender_client_msg_id_key',
  'client_msg_id is unique per sender');
select is_definer('private', 'send_message', array['text', 'text', 'uuid'],
  'the RPC body runs as its owner');
select isnt_definer('public', 'send_message', array['text', 'text', 'uuid'],
  'the exposed RPC entry is security invoker');
select function_privs_are('public', 'send_message', array['text', 'text', 'uuid'], 'anon',
  array[]::text[], 'anon cannot call send_message');
select function_privs_are('public', 'send_message', array['text', 'text', 'uuid'],
  'authenticated', array['EXECUTE'], 'authenticated can call send_message');
select is(
  (select count(*)::int from pg_proc
   where pronamespace = 'pgmq'::regnamespace
     and has_function_privilege('authenticated', oid, 'execute')),
  0, 'authenticated can execute nothing in pgmq');
select is(
  (select count(*)::int from pg_proc
   where prosecdef and pronamespace in ('public'::regnamespace, 'private'::regnamespace)
     and not coalesce('search_path=""' = any(proconfig), false)),
  0, 'every SECURITY DEFINER function has search_path fixed to empty');
select policies_are('public', 'messages', array[
  'Admins can read messages',
  'Members can read messages of groups assigned to their teams',
  'The poller can read messages',
  'The poller can update message statuses']);
select ok(
  exists (select 1 from pg_publication_tables
          where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'messages'),
  'messages are published to Supabase Realtime');

select * from finish();
rollback;
