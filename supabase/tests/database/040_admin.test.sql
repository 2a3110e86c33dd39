begin;
set local search_path = public, extensions;
select plan(13);
select tests.seed_agency();
select tests.authenticate_as('admin@agency.test');

select results_eq($$select qr_code from public.whatsapp_sessions where phone_number = '905559990001'$$,
  array['qr-secret'], 'an admin sees the QR code');
select is((select count(*)::int from public.whatsapp_groups), tests.row_count('public.whatsapp_groups'),
  'an admin sees every group');
select lives_ok($$insert into public.employee_groups (name) values ('Test Agency Renewals')$$,
  'an admin creates a team');
select lives_ok($$insert into public.group_assignments (group_jid, employee_group_id)
  select '120363000000000002@g.us', id from public.employee_groups where name = 'Test Agency Renewals'$$,
  'an admin assigns a group to a team');
select lives_ok($$select public.send_message('120363000000000002@g.us', 'Genel duyuru')$$,
  'an admin can send to any active group');
select throws_ok($$update public.messages set status = 'read'$$, '42501', null,
  'even an admin cannot change a status directly');
-- Finding 3: an admin may know which groups exist.
select throws_ok($$select public.send_message('120363999999999999@g.us', 'hi')$$, 'PT404', null,
  'an admin learns that a group is unknown');
-- Finding 8: the same rule for an admin.
select throws_ok($$select public.send_message('120363000000000002@g.us', E'\u200B\u3164\uFE0F')$$,
  '22004', null, 'invisible content is empty for an admin too');
-- Finding 2: admins read and change the quotas.
select results_eq('select sender_per_minute, group_pending from public.send_limits',
  $$values (60, 1000)$$, 'an admin reads the send limits');
select lives_ok($$update public.send_limits set sender_per_minute = null, group_pending = 5000$$,
  'an admin changes the send limits');
select results_eq('select sender_per_minute, group_pending from public.send_limits',
  $$values (null::int, 5000)$$, 'the new limits are kept');

select tests.authenticate_as('impostor@agency.test');
select is_empty($$select * from public.whatsapp_sessions$$,
  'a user with admin only in user_metadata is not an admin');
select throws_ok($$select public.send_message('120363999999999999@g.us', 'hi')$$, 'PT403', null,
  'nor told that a group is unknown');

select * from finish();
rollback;
