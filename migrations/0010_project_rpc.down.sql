DROP FUNCTION public.collaborator_id(UUID, UUID, TEXT);
