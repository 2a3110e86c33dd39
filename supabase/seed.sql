-- Demo data for a local stack (`supabase db reset` and the README's demo command):
-- an admin, an employee in the Claims team, one WhatsApp session and three groups.
insert into auth.users (id, email, aud, role, raw_app_meta_data)
values ('00000000-0000-4000-8000-00000000a001', 'admin@demo.agency', 'authenticated',
        'authenticated', '{"role": "admin"}'),
       ('00000000-0000-4000-8000-00000000e001', 'employee@demo.agency', 'authenticated',
        'authenticated', '{}')
on conflict (id) do nothing;

insert into public.whatsapp_sessions (id, user_id, phone_number, status)
values ('00000000-0000-4000-8000-00000000c001', '00000000-0000-4000-8000-00000000a001',
        '905550000001', 'disconnected')
on conflict (id) do nothing;

insert into public.whatsapp_groups (jid, name, session_id)
values ('120363000000000101@g.us', 'Hasar Takip', '00000000-0000-4000-8000-00000000c001'),
       ('120363000000000102@g.us', 'Poliçe Yenileme', '00000000-0000-4000-8000-00000000c001'),
       ('120363000000000103@g.us', 'Müşteri Duyuruları', '00000000-0000-4000-8000-00000000c001')
on conflict (jid) do nothing;

insert into public.employee_groups (id, name)
values ('00000000-0000-4000-8000-00000000b001', 'Claims')
on conflict do nothing;

insert into public.employee_group_members (employee_group_id, user_id)
values ('00000000-0000-4000-8000-00000000b001', '00000000-0000-4000-8000-00000000e001')
on conflict do nothing;

insert into public.group_assignments (group_jid, employee_group_id)
select jid, '00000000-0000-4000-8000-00000000b001' from public.whatsapp_groups
where session_id = '00000000-0000-4000-8000-00000000c001'
on conflict (group_jid, employee_group_id) do nothing;

-- Storage for attachments: a private bucket `claims` whose objects are filed under their
-- group's JID (`<group jid>/<file>`), readable by the teams the group is assigned to (and so
-- sendable by them with send_message's attachment_bucket/attachment_path).
insert into storage.buckets (id, name, public)
values ('claims', 'claims', false)
on conflict (id) do nothing;

do $$
begin
  if not exists (select 1 from pg_policies
                 where schemaname = 'storage' and tablename = 'objects'
                   and policyname = 'Teams can read the claim files of their groups') then
    create policy "Teams can read the claim files of their groups" on storage.objects
      for select to authenticated
      using (bucket_id = 'claims'
             and split_part(name, '/', 1) in (select private.my_group_jids()));
  end if;
end
$$;
