begin;
set local search_path = public, extensions;
select plan(7);
select tests.seed_agency();
select tests.authenticate_as('admin@agency.test');

select results_eq('select qr_code from public.whatsapp_sessions', array['qr-secret'],
  'an admin sees the QR code');
select is((select count(*)::int from public.whatsapp_groups), 4, 'an admin sees every group');
select lives_ok($$insert into public.employee_groups (name) values ('Renewals')$$,
  'an admin creates a team');
select lives_ok($$insert into public.group_assignments (group_jid, employee_group_id)
  select '120363000000000002@g.us', id from public.employee_groups where name = 'Renewals'$$,
  'an admin assigns a group to a team');
select lives_ok($$select public.send_message('120363000000000002@g.us', 'Genel duyuru')$$,
  'an admin can send to any active group');
select throws_ok($$update public.messages set status = 'read'$$, '42501', null,
  'even an admin cannot change a status directly');

select tests.authenticate_as('sales@agency.test');
select is_empty($$select * from public.whatsapp_sessions$$,
  'a user with admin only in user_metadata is not an admin');

select * from finish();
rollback;
