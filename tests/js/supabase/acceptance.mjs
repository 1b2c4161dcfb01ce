// The acceptance as a plain script, the way an application uses realtime-js:
//
//   node acceptance.mjs ws://127.0.0.1:8080/realtime/v1 "$(sitebuilder-gateway token USER_ID)" SITEMAP_ID PROJECT_ID
//
// It follows the UPDATEs of the sitemap's wireframes and the presence of the project's
// channel, printing one JSON line per event (`at` in ms since the epoch), until the
// channel is closed, e.g. when the key expires. Nothing here is gateway-specific but the
// URL and the key; `transport` is only there because Node 20 has no global WebSocket.

import { RealtimeClient } from "@supabase/realtime-js";
import WebSocket from "ws";

const [endpoint, key, sitemapId, projectId] = process.argv.slice(2);
if (!projectId) {
  console.error("usage: node acceptance.mjs ENDPOINT KEY SITEMAP_ID PROJECT_ID");
  process.exit(2);
}

const say = (event, data) => console.log(JSON.stringify({ event, at: Date.now(), ...data }));

const client = new RealtimeClient(endpoint, {
  params: { apikey: key },
  accessToken: async () => key,
  transport: WebSocket,
});

const channel = client.channel(`project:${projectId}`);
channel
  .on(
    "postgres_changes",
    { event: "UPDATE", schema: "public", table: "wireframes", filter: `sitemap_id=eq.${sitemapId}` },
    (change) => say("change", { change }),
  )
  .on("presence", { event: "sync" }, () => say("presence", { state: channel.presenceState() }))
  .on("system", {}, (payload) => say("system", { payload }))
  .subscribe(async (status, error) => {
    say("status", { status, error: error?.message ?? null });
    if (status !== "SUBSCRIBED") {
      await client.disconnect();
      process.exit(status === "CLOSED" ? 0 : 1);
    }
  });
