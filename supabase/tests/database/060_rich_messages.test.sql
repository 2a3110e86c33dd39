-- Rich messages as each persona: an attachment read under Storage's RLS, WhatsApp's limits,
-- mentions, a reply, a scheduled message and its cancel, and the fan-out (all or nothing).
begin;
set local search_path = public, extensions;
select plan(31);
select tests.seed_agency();

select has_function('public', 'send_message',
  array['text', 'text', 'uuid', 'text', 'text', 'uuid', 'text[]', 'timestamp with time zone'],
  'send_message takes the attachment, reply, mentions and send_at options');
select has_function('public', 'send_to_groups',
  array['text[]', 'text', 'uuid', 'text', 'text', 'timestamp with time zone'], 'send_to_groups exists');
select has_function('public', 'cancel_message', array['uuid'], 'cancel_message exists');
select is((select count(*)::int from pg_proc where pronamespace = 'public'::regnamespace
           and proname = 'send_message'), 1, 'PostgREST sees one send_message');
select is_definer('private', 'send_to_groups',
  array['text[]', 'text', 'uuid', 'text', 'text', 'timestamp with time zone'],
  'the fan-out body runs as its owner');
select isnt_definer('public', 'cancel_message', array['uuid'], 'the cancel entry is security invoker');
select function_privs_are('public', 'send_to_groups',
  array['text[]', 'text', 'uuid', 'text', 'text', 'timestamp with time zone'], 'anon',
  array[]::text[], 'anon cannot call send_to_groups');
select function_privs_are('public', 'cancel_message', array['uuid'], 'anon', array[]::text[],
  'anon cannot call cancel_message');

-- The agency's files: the employee's own, and one of Sales. Each user reads their own.
update public.whatsapp_groups
set participants = '[{"jid": "905551111111@s.whatsapp.net", "lid": "111111111111111@lid", "phone_number": "905551111111@s.whatsapp.net", "is_admin": false}]'
where jid = '120363000000000001@g.us';
insert into storage.buckets (id, name) values ('pgtap-claims', 'pgtap-claims');
insert into storage.objects (bucket_id, name, owner_id, metadata)
select 'pgtap-claims', o.name, u.id::text, o.metadata
from auth.users u, (values
  ('employee@agency.test', 'dosya.pdf', '{"size": 1048576, "mimetype": "application/pdf"}'::jsonb),
  ('employee@agency.test', 'foto.png', '{"size": 6291456, "mimetype": "image/png"}'::jsonb),
  ('employee@agency.test', 'tipsiz', '{"size": 10}'::jsonb),
  ('sales@agency.test', 'teklif.pdf', '{"size": 10, "mimetype": "application/pdf"}'::jsonb)) o(email, name, metadata)
where u.email = o.email;
create policy "Users can read their own pgtap claim files" on storage.objects
  for select to authenticated
  using (bucket_id = 'pgtap-claims' and owner_id = (select auth.uid())::text);

select tests.authenticate_as('employee@agency.test');
select is((public.send_message('120363000000000001@g.us', '', null, 'pgtap-claims', 'dosya.pdf')).attachment_kind,
  'document', 'an employee sends their own PDF as a document, with an empty caption');
select throws_ok($$select public.send_message('120363000000000001@g.us', 'x', null, 'pgtap-claims', 'teklif.pdf')$$,
  'PT404', null, 'an object the employee may not read is not found');
select throws_ok($$select public.send_message('120363000000000001@g.us', 'x', null, 'pgtap-claims', 'foto.png')$$,
  'PT413', null, 'a PNG over 5 MB is too big for an image');
select throws_ok($$select public.send_message('120363000000000001@g.us', 'x', null, 'pgtap-claims', 'tipsiz')$$,
  'PT415', null, 'an object without a type is not allowed');
select throws_ok($$select public.send_message('120363000000000001@g.us', 'x', null, 'pgtap-claims', null)$$,
  '22023', null, 'a bucket without a path is refused');
select is((public.send_message('120363000000000001@g.us', '@905551111111', mentions => array['905551111111@s.whatsapp.net'])).mentions,
  '[{"jid": "905551111111@s.whatsapp.net", "lid": "111111111111111@lid"}]'::jsonb,
  'a mention is resolved to the participant''s JID and LID');
select throws_ok($$select public.send_message('120363000000000001@g.us', 'x', mentions => array['905559999999@s.whatsapp.net'])$$,
  'PT422', null, 'a mention of a non-participant is refused');
select throws_ok($$select public.send_message('120363000000000001@g.us', 'x',
                     reply_to => (select id from public.messages where content = '@905551111111'))$$,
  'PT425', null, 'a reply to a message not sent yet is refused');
select is((public.send_message('120363000000000001@g.us', 'Hatırlatma', gen_random_uuid(),
                               send_at => now() + interval '1 day')).status::text,
  'scheduled', 'a message for tomorrow is scheduled');
select tests.clear_authentication();
select is((select count(*)::int from pgmq.q_whatsapp_outbound q
           join public.messages m on m.id = (q.message ->> 'message_id')::uuid
           where m.content = 'Hatırlatma'), 0, 'a scheduled message has no job yet');
select tests.authenticate_as('employee@agency.test');
select throws_ok($$select public.send_message('120363000000000001@g.us', 'x', send_at => now() - interval '1 minute')$$,
  'PT422', null, 'a send_at in the past is refused');
select throws_ok($$select public.send_message('120363000000000001@g.us', 'x', send_at => now() + interval '31 days')$$,
  'PT416', null, 'a send_at more than 30 days ahead is refused');
select is((public.cancel_message((select id from public.messages where content = 'Hatırlatma'))).status::text,
  'canceled', 'its sender cancels it');
select throws_ok($$select public.cancel_message((select id from public.messages where content = 'Hatırlatma'))$$,
  'PT409', null, 'a canceled message cannot be canceled again');
select throws_ok($$select public.send_to_groups(array['120363000000000001@g.us', '120363000000000002@g.us'], 'hepsine')$$,
  'PT424', null, 'a fan-out with a group of another team sends nothing');

select tests.authenticate_as('sales@agency.test');
select throws_ok($$select public.cancel_message((select id from public.messages where content = 'Hatırlatma'))$$,
  'PT404', null, 'another employee cannot cancel it (and cannot see it)');

select tests.authenticate_as('admin@agency.test');
select is((select count(*)::int from public.send_to_groups(
             array['120363000000000001@g.us', '120363000000000002@g.us', '120363000000000005@g.us'], 'Duyuru')),
  3, 'an admin sends one announcement to three groups');
select is((select count(distinct batch_id)::int from public.messages where content = 'Duyuru'), 1,
  'the three rows share one batch');
select throws_ok($$select public.send_message('120363000000000002@g.us', 'x', null, 'pgtap-claims', 'tipsiz')$$,
  'PT404', null, 'no policy lets an admin read the employee''s file here');

select tests.act_as_role('anon');
select throws_ok($$select public.send_to_groups(array['120363000000000001@g.us'], 'x')$$, '42501', null,
  'anon cannot fan out');
select throws_ok($$select public.cancel_message(gen_random_uuid())$$, '42501', null,
  'anon cannot cancel');
select tests.act_as_role('service_role');
select throws_ok($$select public.send_to_groups(array['120363000000000001@g.us'], 'x')$$, '42501',
  'not authenticated', 'the service role has no user to send as');
select tests.clear_authentication();
select ok((select count(*) from public.messages where status = 'scheduled') = 0
          and (select count(*) from public.messages where status = 'canceled') = 1,
  'nothing is left scheduled, one message canceled');

select * from finish();
rollback;
