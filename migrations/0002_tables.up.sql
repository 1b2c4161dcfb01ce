-- The six tables of the schema document, column for column, with every index it
-- lists, plus the few the gateway's queries need, and updated_at kept by trigger.

CREATE TABLE public.projects (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    user_id UUID NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT,
    type TEXT NOT NULL, -- 'website', 'landing-page', 'portfolio', etc.
    status TEXT NOT NULL DEFAULT 'draft', -- 'draft', 'active', 'archived'
    data JSONB DEFAULT '{}'::jsonb, -- Project-specific configuration
    settings JSONB DEFAULT '{}'::jsonb, -- User preferences and options
    collaborators UUID[] DEFAULT '{}', -- Array of user IDs
    is_public BOOLEAN DEFAULT FALSE
);

CREATE TABLE public.sitemaps (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    project_id UUID NOT NULL REFERENCES public.projects(id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    description TEXT,
    pages JSONB DEFAULT '{}'::jsonb, -- Site structure and pages
    metadata JSONB DEFAULT '{}'::jsonb, -- Additional metadata
    version INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE public.wireframes (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    sitemap_id UUID NOT NULL REFERENCES public.sitemaps(id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    description TEXT,
    layout JSONB DEFAULT '{}'::jsonb, -- Wireframe layout data
    style_guide JSONB DEFAULT '{}'::jsonb, -- Associated style information
    components TEXT[] DEFAULT '{}', -- Array of component IDs
    version INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE public.style_guides (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    wireframe_id UUID NOT NULL REFERENCES public.wireframes(id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    description TEXT,
    colors JSONB DEFAULT '{}'::jsonb, -- Color palette
    typography JSONB DEFAULT '{}'::jsonb, -- Font settings
    spacing JSONB DEFAULT '{}'::jsonb, -- Spacing rules
    components JSONB DEFAULT '{}'::jsonb, -- Component styles
    grid JSONB DEFAULT '{}'::jsonb, -- Grid system
    breakpoints JSONB DEFAULT '{}'::jsonb, -- Responsive breakpoints
    version INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE public.builder_sessions (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    user_id UUID NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
    project_id UUID REFERENCES public.projects(id) ON DELETE SET NULL,
    session_token TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused', 'completed', 'cancelled')),
    current_step TEXT NOT NULL DEFAULT 'initializing',
    step_data JSONB DEFAULT '{}'::jsonb, -- Current step data
    progress JSONB DEFAULT '{}'::jsonb, -- Overall progress tracking
    metadata JSONB DEFAULT '{}'::jsonb, -- Session metadata
    started_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    ended_at TIMESTAMP WITH TIME ZONE,
    duration INTEGER, -- Duration in seconds
    ip_address INET,
    user_agent TEXT
);

CREATE TABLE public.version_history (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    entity_type TEXT NOT NULL, -- 'projects', 'sitemaps', 'wireframes', 'style_guides'
    entity_id UUID NOT NULL,
    version_number INTEGER NOT NULL,
    user_id UUID NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
    changes JSONB DEFAULT '{}'::jsonb, -- What changed
    data JSONB DEFAULT '{}'::jsonb, -- Full entity data at this version
    message TEXT, -- Human-readable change description
    is_major BOOLEAN DEFAULT FALSE,
    -- Not in the schema document: two writers must never both get the same number.
    CONSTRAINT version_history_entity_version_key UNIQUE (entity_type, entity_id, version_number)
);

-- Indexes listed by the schema document.
CREATE INDEX idx_projects_user_id_status ON public.projects(user_id, status);
CREATE INDEX idx_projects_updated_at ON public.projects(updated_at);
CREATE INDEX idx_sitemaps_project_id_updated ON public.sitemaps(project_id, updated_at);
CREATE INDEX idx_sitemaps_version ON public.sitemaps(project_id, version);
CREATE INDEX idx_wireframes_sitemap_id_updated ON public.wireframes(sitemap_id, updated_at);
CREATE INDEX idx_wireframes_version ON public.wireframes(sitemap_id, version);
CREATE INDEX idx_style_guides_wireframe_id_updated ON public.style_guides(wireframe_id, updated_at);
CREATE INDEX idx_style_guides_version ON public.style_guides(wireframe_id, version);
CREATE INDEX idx_builder_sessions_user_id ON public.builder_sessions(user_id);
CREATE INDEX idx_builder_sessions_status ON public.builder_sessions(status);
CREATE INDEX idx_builder_sessions_session_token ON public.builder_sessions(session_token);
CREATE INDEX idx_version_history_entity ON public.version_history(entity_type, entity_id);
CREATE INDEX idx_version_history_user_id ON public.version_history(user_id);

-- Not in the schema document: "shared with me" listings and a project's sessions.
CREATE INDEX idx_projects_collaborators ON public.projects USING gin (collaborators);
CREATE INDEX idx_builder_sessions_project_id ON public.builder_sessions(project_id);

CREATE FUNCTION public.set_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER set_updated_at BEFORE UPDATE ON public.projects
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();
CREATE TRIGGER set_updated_at BEFORE UPDATE ON public.sitemaps
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();
CREATE TRIGGER set_updated_at BEFORE UPDATE ON public.wireframes
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();
CREATE TRIGGER set_updated_at BEFORE UPDATE ON public.style_guides
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();
CREATE TRIGGER set_updated_at BEFORE UPDATE ON public.builder_sessions
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();
