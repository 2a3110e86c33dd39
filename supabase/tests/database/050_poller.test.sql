begin;
set local search_path = public, extensions;
select plan(8);
select tests.seed_agency();
select tests.authenticate_as('employee@agency.test');
select isnt((public.send_message('120363000000000001@g.us', 'kuyrukta')).id, null,
  'an employee queues a message');
select tests.clear_authentication();
set local role wa_poller;

select is((select count(*)::int from pgmq.read('whatsapp_outbound', 30, 10)), 1,
  'the poller reads the queue');
select lives_ok($$update public.messages set status = 'sent', wa_message_id = '3EB0ABC', sent_at = now()$$,
  'the poller writes statuses');
select lives_ok($$select pgmq.archive('whatsapp_outbound', (select max(msg_id) from pgmq.q_whatsapp_outbound))$$,
  'the poller archives a queue message');
select throws_ok($$update public.messages set content = 'changed'$$, '42501', null,
  'the poller cannot change message content');
select throws_ok($$delete from public.messages$$, '42501', null, 'the poller cannot delete messages');
select throws_ok($$select * from auth.users$$, '42501', null, 'the poller cannot read auth.users');
select throws_ok($$create table public.x (id int)$$, '42501', null, 'the poller cannot create tables');

select * from finish();
rollback;
