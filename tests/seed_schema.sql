-- The six tables and the indexes of the product's original schema document, copied
-- verbatim, so tests/test_schema.py can load them into a scratch database and compare
-- the catalog with what the migrations build.
--
-- Only the preamble is not from the document: the minimum its statements reference
-- (Supabase provides these), so they run on a bare PostgreSQL.

CREATE SCHEMA auth;
CREATE TABLE auth.users (id uuid PRIMARY KEY DEFAULT gen_random_uuid());
CREATE FUNCTION public.uuid_generate_v4() RETURNS uuid
    LANGUAGE sql VOLATILE PARALLEL SAFE
    AS 'SELECT gen_random_uuid()';

-- From the schema document: the six tables.

CREATE TABLE projects (
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

CREATE TABLE sitemaps (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    project_id UUID NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    description TEXT,
    pages JSONB DEFAULT '{}'::jsonb, -- Site structure and pages
    metadata JSONB DEFAULT '{}'::jsonb, -- Additional metadata
    version INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE wireframes (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    sitemap_id UUID NOT NULL REFERENCES sitemaps(id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    description TEXT,
    layout JSONB DEFAULT '{}'::jsonb, -- Wireframe layout data
    style_guide JSONB DEFAULT '{}'::jsonb, -- Associated style information
    components TEXT[] DEFAULT '{}', -- Array of component IDs
    version INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE style_guides (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    wireframe_id UUID NOT NULL REFERENCES wireframes(id) ON DELETE CASCADE,
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

CREATE TABLE builder_sessions (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    user_id UUID NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
    project_id UUID REFERENCES projects(id) ON DELETE SET NULL,
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

CREATE TABLE version_history (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    entity_type TEXT NOT NULL, -- 'projects', 'sitemaps', 'wireframes', 'style_guides'
    entity_id UUID NOT NULL,
    version_number INTEGER NOT NULL,
    user_id UUID NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
    changes JSONB DEFAULT '{}'::jsonb, -- What changed
    data JSONB DEFAULT '{}'::jsonb, -- Full entity data at this version
    message TEXT, -- Human-readable change description
    is_major BOOLEAN DEFAULT FALSE
);

-- From the schema document: its indexes.

CREATE INDEX idx_projects_user_id_status ON projects(user_id, status);
CREATE INDEX idx_projects_updated_at ON projects(updated_at);
CREATE INDEX idx_sitemaps_project_id_updated ON sitemaps(project_id, updated_at);
CREATE INDEX idx_sitemaps_version ON sitemaps(project_id, version);
CREATE INDEX idx_wireframes_sitemap_id_updated ON wireframes(sitemap_id, updated_at);
CREATE INDEX idx_wireframes_version ON wireframes(sitemap_id, version);
CREATE INDEX idx_style_guides_wireframe_id_updated ON style_guides(wireframe_id, updated_at);
CREATE INDEX idx_style_guides_version ON style_guides(wireframe_id, version);
CREATE INDEX idx_builder_sessions_user_id ON builder_sessions(user_id);
CREATE INDEX idx_builder_sessions_status ON builder_sessions(status);
CREATE INDEX idx_builder_sessions_session_token ON builder_sessions(session_token);
CREATE INDEX idx_version_history_entity ON version_history(entity_type, entity_id);
CREATE INDEX idx_version_history_user_id ON version_history(user_id);
