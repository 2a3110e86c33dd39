begin;
set local search_path = public, extensions;
select plan(8);
select tests.seed_agency();
select tests.act_as_role('anon');

select throws_ok('select * from public.whatsapp_sessions', '42501', null, 'anon cannot read sessions');
select throws_ok('select * from public.whatsapp_groups', '42501', null, 'anon cannot read groups');
select throws_ok('select * from public.group_assignments', '42501', null, 'anon cannot read assignments');
select throws_ok('select * from public.messages', '42501', null, 'anon cannot read messages');
select throws_ok('select * from public.employee_groups', '42501', null, 'anon cannot read teams');
select throws_ok('select * from public.employee_group_members', '42501', null, 'anon cannot read memberships');
select throws_ok($$select public.send_message('120363000000000001@g.us', 'hi')$$, '42501', null,
  'anon cannot call send_message');
select throws_ok($$select pgmq.send('whatsapp_outbound', '{}'::jsonb)$$, '42501', null,
  'anon cannot write to the queue');

select * from finish();
rollback;
