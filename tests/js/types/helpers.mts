// Compiled by tests/test_js_client_types.py with `tsc --noEmit --strict`: the gateway's
// client as a TypeScript front end uses it, through the generated .d.ts only. The test
// also compiles copies with one result field misspelled, which must fail.
import { builderHelpers, connect } from "../../../gateway/app/static/sitebuilder-client.js";

export async function editorSession(accessToken: () => Promise<string>, projectId: string): Promise<string[]> {
  const client = connect("ws://localhost:8080/ws", { getToken: accessToken });
  const helpers = builderHelpers(client);
  const seen: string[] = [];

  const { data: session, error } = await helpers.session.create({
    project_id: projectId,
    current_step: "sitemap-generation",
    metadata: { source: "types test" },
  });
  if (error) return [error.code, error.message];
  seen.push(session.session_token, session.current_step, session.status);

  const progress = await helpers.session.updateProgress(session.id, {
    current_step: "wireframe-design",
    progress: { completed: 25, total: 100 },
  });
  if (progress.data) seen.push(progress.data.current_step);

  const { data: structure } = await helpers.project.getWithRelations(projectId);
  if (structure) {
    seen.push(structure.project.name, ...structure.sitemaps.map((sitemap) => sitemap.title));
    for (const wireframe of structure.wireframes) seen.push(wireframe.title, String(wireframe.version));
  }

  const { data: versions } = await helpers.version.getByEntity("projects", projectId);
  for (const version of versions ?? []) seen.push(version.message ?? "", String(version.version_number));

  const { data: stats } = await helpers.analytics.getProjectStats(projectId);
  if (stats) seen.push(String(stats.wireframes), String(stats.editors_online));

  const { data: trash } = await helpers.trash.list(projectId);
  for (const entry of trash?.entries ?? []) {
    seen.push(entry.title, entry.deleted_by_name ?? "someone");
    const { data: restored } = await helpers.trash.restore(entry.id);
    for (const row of restored?.restored ?? []) seen.push(row.entity_type, String(row.version));
  }

  const page = await client.rpc("project.list", {});
  for (const project of page.projects) seen.push(project.name, project.status);

  const subscription = helpers.collaboration.subscribeToProject(projectId, (payload) => {
    if (payload.type === "wireframe" && payload.eventType === "UPDATE") seen.push(payload.commit_timestamp);
  });
  subscription.unsubscribe();
  client.close();
  return seen;
}
