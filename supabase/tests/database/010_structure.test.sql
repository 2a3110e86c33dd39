begin;
set local search_path = public, extensions;
select plan(20);

select tables_are('public', array['whatsapp_sessions', 'whatsapp_groups', 'group_assignments',
  'messages', 'employee_groups', 'employee_group_members', 'message_receipts', 'send_limits',
  'session_events', 'message_edits']);
select is(
  (select array_agg(relname::text order by relname) from pg_class
   where relnamespace = 'public'::regnamespace and relkind = 'r' and not relrowsecurity),
  null, 'every table in public has row level security on');
select col_is_pk('public', 'whatsapp_groups', 'jid', 'groups are keyed by their WhatsApp JID');
select index_is_unique('public', 'messages', 'messages_sender_client_msg_id_key',
  'client_msg_id is unique per sender');
select is_definer('private', 'send_message', array['text', 'text', 'uuid', 'text', 'text', 'uuid', 'text[]', 'timestamp with time zone'],
  'the RPC body runs as its owner');
select isnt_definer('public', 'send_message', array['text', 'text', 'uuid', 'text', 'text', 'uuid', 'text[]', 'timestamp with time zone'],
  'the exposed RPC entry is security invoker');
select function_privs_are('public', 'send_message', array['text', 'text', 'uuid', 'text', 'text', 'uuid', 'text[]', 'timestamp with time zone'], 'anon',
  array[]::text[], 'anon cannot call send_message');
select function_privs_are('public', 'send_message', array['text', 'text', 'uuid', 'text', 'text', 'uuid', 'text[]', 'timestamp with time zone'],
  'authenticated', array['EXECUTE'], 'authenticated can call send_message');
select is(
  (select count(*)::int from pg_proc
   where pronamespace = 'pgmq'::regnamespace
     and has_function_privilege('authenticated', oid, 'execute')),
  0, 'authenticated can execute nothing in pgmq');
-- Finding 1: pg_temp is searched first for types and relations unless the path names it.
select is(
  (select array_agg(oid::regprocedure::text order by 1) from pg_proc
   where pronamespace in ('public'::regnamespace, 'private'::regnamespace)
     and not coalesce('search_path=pg_catalog, pg_temp' = any(proconfig), false)),
  null, 'every function in public and private searches pg_catalog, then pg_temp last');
select policies_are('public', 'messages', array[
  'Members can read messages of groups assigned to their teams, admins all',
  'The poller can read messages',
  'The poller can update message statuses']);
select ok(
  exists (select 1 from pg_publication_tables
          where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'messages'),
  'messages are published to Supabase Realtime');
-- Finding 6: the sender is a value kept for the audit trail, not a reference to the account.
select is(
  (select count(*)::int from pg_constraint
   where conrelid = 'public.messages'::regclass and contype = 'f'
     and confrelid = 'auth.users'::regclass),
  0, 'messages.sender_id outlives the account');
select has_column('public', 'messages', 'sender_email', 'a message keeps its sender''s e-mail');
-- Finding 7: the poller has no privilege in pgmq.
select ok(not has_schema_privilege('wa_poller', 'pgmq', 'usage'), 'wa_poller cannot use pgmq');
select is(
  (select count(*)::int from pg_class c, unnest(array['select', 'insert', 'update', 'delete',
                                                      'truncate', 'references', 'trigger']) p
   where c.relnamespace = 'pgmq'::regnamespace and c.relkind in ('r', 'p')
     and (has_table_privilege('wa_poller', c.oid, p)
          or (p in ('select', 'insert', 'update', 'references')
              and has_any_column_privilege('wa_poller', c.oid, p)))),
  0, 'wa_poller has no privilege on any table in pgmq');
-- Finding 8: one rule for what is blank, in the table's check and in send_message.
select ok(private.is_blank(E'\u200B\u3164\u2800\uFE0F\u00AD\u0085'), 'invisible characters are blank');
select ok(not private.is_blank(E'\u2764\uFE0F'), 'an emoji with its variation selector is not blank');
insert into public.whatsapp_groups (jid, name) values ('120363000000000777@g.us', 'Yapı');
select throws_ok($$insert into public.messages (group_jid, content)
                   values ('120363000000000777@g.us', E'\u200B\u2060\u3164')$$,
  '23514', null, 'the table refuses invisible content whoever writes it');
select is(
  (select sender_per_minute || '/' || group_pending from public.send_limits),
  '60/1000', 'send limits default to 60 a minute per sender and 1000 waiting per group');

select * from finish();
rollback;
