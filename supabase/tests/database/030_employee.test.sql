begin;
set local search_path = public, extensions;
select plan(30);
select tests.seed_agency();
select tests.authenticate_as('employee@agency.test');

select results_eq('select name::text from public.whatsapp_groups order by name',
  array['Duyuru', 'Eski', 'Hasar Takip'], 'an employee sees only the groups assigned to their team');
select is_empty('select * from public.whatsapp_sessions', 'an employee sees no session (no QR code)');
select results_eq('select name::text from public.employee_groups', array['Test Agency Claims'],
  'an employee sees only their own team');

select lives_ok($$select public.send_message('120363000000000001@g.us', 'Dosyanız açıldı 🚗')$$,
  'an employee can send to an assigned group');
select results_eq($$select status::text, content, sender_email::text from public.messages$$,
  $$values ('pending', 'Dosyanız açıldı 🚗', 'employee@agency.test')$$,
  'the message is pending, readable by its sender, and says who sent it');
select throws_ok($$select public.send_message('120363000000000002@g.us', 'hi')$$, 'PT403', null,
  'a group of another team is refused');
-- Finding 3: an unknown group is refused exactly as a group the employee may not see.
select throws_ok($$select public.send_message('120363999999999999@g.us', 'hi')$$, 'PT403', null,
  'an unknown group is refused as not assigned');
select is(
  tests.refusal($$select public.send_message('120363999999999999@g.us', 'hi')$$,
                '120363999999999999@g.us'),
  tests.refusal($$select public.send_message('120363000000000005@g.us', 'hi')$$,
                '120363000000000005@g.us'),
  'an unknown group and an unassigned one get the same refusal');
select throws_ok($$select public.send_message('120363000000000003@g.us', 'hi')$$, 'PT410', null,
  'an inactive group is refused');
select throws_ok($$select public.send_message('120363000000000004@g.us', 'hi')$$, 'PT409', null,
  'a read-only group is refused');
select throws_ok($$select public.send_message('hasar-takip', 'hi')$$, '22023', null,
  'a malformed JID is refused');
-- Finding 4: a JID longer than the column is refused before anything quotes it.
select throws_ok(format('select public.send_message(%L, %L)', repeat('1', 95) || '@g.us', 'hi'),
  '22001', null, 'a group_jid longer than 64 characters is refused');
select throws_ok($$select public.send_message('120363000000000001@g.us', '  ')$$, '22004', null,
  'blank content is refused');
-- Finding 8: content made only of invisible characters is empty.
select throws_ok(format('select public.send_message(%L, %L)', '120363000000000001@g.us', c), '22004',
                 null, 'content of only ' || label || ' is empty')
from (values ('U+0085', E'\u0085'), ('U+200B', E'\u200B'), ('U+200D', E'\u200D'),
             ('U+2060', E'\u2060'), ('U+00AD', E'\u00AD'), ('U+3164', E'\u3164'),
             ('U+2800', E'\u2800'), ('U+FE0F', E'\uFE0F'), ('controls', E'\u0001\u007F\u009F'),
             ('U+FEFF and U+202E', E'\uFEFF\u202E'),
             ('a mixture', E' \u200B\u3164\n\u2800\uFE0F\u00AD')) v(label, c);
select lives_ok($$select public.send_message('120363000000000001@g.us', E'Tamam \u2764\uFE0F')$$,
  'an emoji with its variation selector is content');
select lives_ok($$select public.send_message('120363000000000001@g.us',
                                             E'\U0001F468\u200D\U0001F469\u200D\U0001F467')$$,
  'a ZWJ sequence is content');
select lives_ok(format('select public.send_message(%L, %L)', '120363000000000001@g.us',
                       repeat(E'\U0001F697', 65536)),
  'content of 65536 code points is accepted, whatever its UTF-16 length');
select throws_ok($$select public.send_message('120363000000000001@g.us', repeat('a', 65537))$$,
  '22001', null, 'content over 65536 characters is refused');
select throws_ok($$insert into public.messages (group_jid, content) values ('120363000000000001@g.us', 'x')$$,
  '42501', null, 'an employee cannot write a message row directly');
select throws_ok($$update public.messages set status = 'read'$$, '42501', null,
  'an employee cannot change a status');

select * from finish();
rollback;
