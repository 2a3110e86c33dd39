-- The poller (role wa_poller) takes and acknowledges jobs only through the project's functions
-- in `private`; pgmq itself is out of its reach. The role running the tests (`postgres`) is a
-- member of wa_poller, as the migrations grant. pgTAP's functions are not the poller's to call:
-- the assertions run as `postgres`, each statement under test as wa_poller (tests.as_poller, or
-- `set local role wa_poller` around a psql \gset).
begin;
set local search_path = public, extensions;
select plan(16);
select tests.seed_agency();
select tests.authenticate_as('employee@agency.test');
select isnt((public.send_message('120363000000000001@g.us', 'kuyrukta')).id, null,
  'an employee queues a message');
select tests.clear_authentication();
select id as session_id from public.whatsapp_sessions where phone_number = '905559990001' \gset

-- Finding 7: no direct access to the queue, in any form.
select throws_ok($$select tests.as_poller($q$select * from pgmq.read('whatsapp_outbound', 30, 10)$q$)$$,
  '42501', null, 'the poller cannot read the queue with pgmq.read');
select throws_ok($$select tests.as_poller($q$select pgmq.archive('whatsapp_outbound', 1::bigint)$q$)$$,
  '42501', null, 'the poller cannot archive with pgmq.archive');
select throws_ok($$select tests.as_poller($q$select * from pgmq.q_whatsapp_outbound$q$)$$,
  '42501', null, 'the poller cannot select the queue table');
select throws_ok($$select tests.as_poller($q$delete from pgmq.q_whatsapp_outbound$q$)$$,
  '42501', null, 'the poller cannot drop a job without archiving it');
select throws_ok($$select tests.as_poller(
                     $q$update pgmq.q_whatsapp_outbound set vt = now() + interval '100 years'$q$)$$,
  '42501', null, 'the poller cannot hide a job');
select throws_ok($$select tests.as_poller($q$insert into pgmq.a_whatsapp_outbound (msg_id, vt, message)
                                             values (1, now(), '{}')$q$)$$,
  '42501', null, 'the poller cannot forge an archived job');
select throws_ok($$select tests.as_poller(
                     $q$lock table pgmq.q_whatsapp_outbound in access exclusive mode nowait$q$)$$,
  '42501', null, 'the poller cannot lock the queue');

-- The project's functions: take (claims the message: `sending`), then sent (archives the job).
-- The take reads the sessions the poller holds: this one is held by 'pgtap'.
update public.whatsapp_sessions set lease_owner = 'pgtap', lease_expires_at = now() + interval '1 minute'
where id = :'session_id';
set local role wa_poller;
select msg_id, message_id from private.take_outbound(
  'pgtap', array[:'session_id']::uuid[], array[10], '{}'::bigint[], 30, 10, 3600) \gset
reset role;
select is((select status::text from public.messages where id = :'message_id'), 'sending',
  'the poller takes the message through private.take_outbound');
set local role wa_poller;
select count(*) as archived from private.outbound_sent(
  array[:'message_id']::uuid[], array[:msg_id]::bigint[], array['3EB0ABC'], array[now()]) \gset
reset role;
select is(:archived::int, 1, 'the poller acknowledges it through private.outbound_sent');
select results_eq($$select status::text, wa_message_id::text from public.messages m
                    where exists (select 1 from pgmq.a_whatsapp_outbound a
                                  where a.message ->> 'message_id' = m.id::text)$$,
  $$values ('sent', '3EB0ABC')$$, 'the message is sent and its job archived');
select lives_ok($$select tests.as_poller(
                    $q$update public.messages set status = 'delivered', delivered_at = now()$q$)$$,
  'the poller writes receipt statuses');
select throws_ok($$select tests.as_poller($q$update public.messages set content = 'changed'$q$)$$,
  '42501', null, 'the poller cannot change message content');
select throws_ok($$select tests.as_poller($q$delete from public.messages$q$)$$, '42501', null,
  'the poller cannot delete messages');
select throws_ok($$select tests.as_poller($q$select * from auth.users$q$)$$, '42501', null,
  'the poller cannot read auth.users');
select throws_ok($$select tests.as_poller($q$create table public.x (id int)$q$)$$, '42501', null,
  'the poller cannot create tables');

select * from finish();
rollback;
