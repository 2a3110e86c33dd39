-- Edit and delete as each persona: the sender and an admin within WhatsApp's windows, another
-- employee, anon and the service role refused; a message never sent, one past the window and
-- one deleted, each with its SQLSTATE; the audit rows read as the message is.
begin;
set local search_path = public, extensions;
select plan(20);
select tests.seed_agency();

select has_function('public', 'edit_message', array['uuid', 'text'], 'edit_message exists');
select has_function('public', 'revoke_message', array['uuid'], 'revoke_message exists');
select isnt_definer('public', 'edit_message', array['uuid', 'text'], 'the edit entry is security invoker');
select is_definer('private', 'revoke_message', array['uuid'], 'the revoke body runs as its owner');
select function_privs_are('public', 'revoke_message', array['uuid'], 'anon', array[]::text[],
  'anon cannot call revoke_message');
select policies_are('public', 'message_edits',
  array['Members can read edits of messages of groups assigned to their teams, admins all'],
  'message_edits has one policy: reading');

select tests.authenticate_as('employee@agency.test');
select public.send_message('120363000000000001@g.us', 'Poliçeniz hazır.');
select public.send_message('120363000000000001@g.us', 'Henüz gitmedi.');
select tests.clear_authentication();
-- WhatsApp accepted the first: as the poller would record it.
update public.messages set status = 'sent', wa_message_id = '3EB0PGTAP', sent_at = now()
where content = 'Poliçeniz hazır.';

select tests.authenticate_as('employee@agency.test');
select is((public.edit_message((select id from public.messages where content = 'Poliçeniz hazır.'),
                               'Poliçeniz yenilendi.')).old_content,
  'Poliçeniz hazır.', 'the sender edits it; the audit row keeps the old text');
select throws_ok($$select public.edit_message((select id from public.messages where content = 'Henüz gitmedi.'), 'x')$$,
  'PT425', null, 'a message not sent yet cannot be edited');
select throws_ok($$select public.edit_message((select id from public.messages where wa_message_id = '3EB0PGTAP'), ' ')$$,
  '22004', null, 'an edit to blank text is refused');
select is((select count(*)::int from public.message_edits), 1, 'the sender reads the edit');

select tests.authenticate_as('sales@agency.test');
select throws_ok($$select public.revoke_message((select id from public.messages where wa_message_id = '3EB0PGTAP'))$$,
  'PT404', null, 'another employee cannot delete it (and cannot see it)');
select is((select count(*)::int from public.message_edits), 0, 'another team reads no edit');

select tests.clear_authentication();
update public.messages set sent_at = now() - interval '21 minutes' where wa_message_id = '3EB0PGTAP';
select tests.authenticate_as('admin@agency.test');
select throws_ok($$select public.edit_message((select id from public.messages where wa_message_id = '3EB0PGTAP'), 'geç')$$,
  'PT410', null, 'past 20 minutes it cannot be edited');
select is((public.revoke_message((select id from public.messages where wa_message_id = '3EB0PGTAP'))).actor_email::text,
  'admin@agency.test', 'an admin deletes it within 60 hours');
select throws_ok($$select public.revoke_message((select id from public.messages where wa_message_id = '3EB0PGTAP'))$$,
  'PT409', null, 'a deleted message cannot be deleted again');

select tests.act_as_role('anon');
select throws_ok($$select public.edit_message(gen_random_uuid(), 'x')$$, '42501', null,
  'anon cannot edit');
select tests.act_as_role('service_role');
select throws_ok($$select public.revoke_message(gen_random_uuid())$$, '42501',
  'not authenticated', 'the service role has no user to act as');
select is((select count(*)::int from public.message_edits), 2, 'the service role reads every edit');
select tests.act_as_role('authenticated');
select throws_ok($$insert into public.message_edits (message_id, group_jid, kind, old_content, actor_id)
                   select id, group_jid, 'revoke', content, sender_id from public.messages limit 1$$,
  '42501', null, 'nobody writes an audit row but the functions');
select tests.clear_authentication();

select is((select count(*)::int from pgmq.q_whatsapp_outbound q
           where q.message ? 'edit_id' and q.headers ->> 'x-pgmq-group' = '120363000000000001@g.us'),
  2, 'the edit and the delete are queued in the group');

select * from finish();
rollback;
