begin;
set local search_path = public, extensions;
select plan(14);
select tests.seed_agency();
select tests.authenticate_as('employee@agency.test');

select results_eq('select name::text from public.whatsapp_groups order by name',
  array['Duyuru', 'Eski', 'Hasar Takip'], 'an employee sees only the groups assigned to their team');
select is_empty('select * from public.whatsapp_sessions', 'an employee sees no session (no QR code)');
select results_eq('select name::text from public.employee_groups', array['Claims'],
  'an employee sees only their own team');

select lives_ok($$select public.send_message('120363000000000001@g.us', 'Dosyanız açıldı 🚗')$$,
  'an employee can send to an assigned group');
select results_eq($$select status::text, content from public.messages$$,
  $$values ('pending', 'Dosyanız açıldı 🚗')$$, 'the message is pending and readable by its sender');
select throws_ok($$select public.send_message('120363000000000002@g.us', 'hi')$$, 'PT403', null,
  'a group of another team is refused');
select throws_ok($$select public.send_message('120363999999999999@g.us', 'hi')$$, 'PT404', null,
  'an unknown group is refused');
select throws_ok($$select public.send_message('120363000000000003@g.us', 'hi')$$, 'PT410', null,
  'an inactive group is refused');
select throws_ok($$select public.send_message('120363000000000004@g.us', 'hi')$$, 'PT409', null,
  'a read-only group is refused');
select throws_ok($$select public.send_message('hasar-takip', 'hi')$$, '22023', null,
  'a malformed JID is refused');
select throws_ok($$select public.send_message('120363000000000001@g.us', '  ')$$, '22004', null,
  'blank content is refused');
select throws_ok($$select public.send_message('120363000000000001@g.us', repeat('a', 65537))$$,
  '22001', null, 'content over 65536 characters is refused');
select throws_ok($$insert into public.messages (group_jid, content) values ('120363000000000001@g.us', 'x')$$,
  '42501', null, 'an employee cannot write a message row directly');
select throws_ok($$update public.messages set status = 'read'$$, '42501', null,
  'an employee cannot change a status');

select * from finish();
rollback;
