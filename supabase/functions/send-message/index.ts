// POST /api/messages/send for servers and automations: the send_message RPC (one group) or
// send_to_groups (many) called as the user of the bearer JWT, the way PostgREST calls it, with
// PostgREST's HTTP statuses and error bodies. Answers 202 with the row or the rows.
//
// Env: SUPABASE_DB_URL (given to every Edge Function; here used as `postgres`, which may take
// the API roles), SUPABASE_JWT_SECRET or JWT_SECRET (HS256 tokens) and/or SUPABASE_JWKS (the
// project's key set, given to Edge Functions on hosted Supabase: ES256/RS256 tokens),
// SEND_MESSAGE_POOL_SIZE (database connections, 16), and PORT and HOST when run with
// `deno run` (the Supabase runtime chooses its own).
import postgres from "postgres";
import {
  createLocalJWKSet,
  errors as joseErrors,
  type JSONWebKeySet,
  type JWTPayload,
  jwtVerify,
  type JWTVerifyGetKey,
} from "jose";

// The parameters of public.send_message and public.send_to_groups (named by these keys) with
// their SQL types; a field of the body that is none of them is refused.
const COMMON = {
  content: "text",
  client_msg_id: "uuid",
  attachment_bucket: "text",
  attachment_path: "text",
  send_at: "timestamptz",
};
const ONE_GROUP: Record<string, string> = {
  group_jid: "text",
  ...COMMON,
  reply_to: "uuid",
  mentions: "text[]",
};
const MANY_GROUPS: Record<string, string> = { group_jids: "text[]", ...COMMON };

// The roles PostgREST lets a Supabase JWT take; any other role claim is refused.
const ROLES = new Set(["anon", "authenticated", "service_role"]);
const PATHS = new Set([
  "/send-message", // what the Supabase gateway passes on (it strips /functions/v1)
  "/functions/v1/send-message", // the same URL when nothing strips it (deno run, tests)
  "/api/messages/send", // the path of the design's API
]);

const dbUrl = Deno.env.get("SUPABASE_DB_URL");
if (!dbUrl) throw new Error("SUPABASE_DB_URL is not set");
// Hosted Supabase refuses secrets named SUPABASE_*: there the HS256 secret goes in JWT_SECRET
// (the name self-hosted Supabase uses).
const secret = Deno.env.get("SUPABASE_JWT_SECRET") ?? Deno.env.get("JWT_SECRET");
const verifyKey = jwtKey(secret, Deno.env.get("SUPABASE_JWKS"));

const sql = postgres(dbUrl, {
  max: Number(Deno.env.get("SEND_MESSAGE_POOL_SIZE") ?? 16),
  connection: { application_name: "send-message" },
});

type ErrorBody = {
  code: string;
  message: string;
  details: string | null;
  hint: string | null;
};

function json(status: number, body: string, headers: HeadersInit = {}): Response {
  return new Response(body, {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...headers },
  });
}

function failure(
  status: number,
  code: string,
  message: string,
  details: string | null = null,
  headers: HeadersInit = {},
): Response {
  const body: ErrorBody = { code, message, details, hint: null };
  return json(status, JSON.stringify(body), headers);
}

function jwtKey(secret?: string, jwks?: string): JWTVerifyGetKey {
  const hmac = secret ? new TextEncoder().encode(secret) : undefined;
  const parsed = jwks ? JSON.parse(jwks) : undefined;
  // SUPABASE_JWKS is {"keys": [...]} or the bare array.
  const keySet = parsed
    ? createLocalJWKSet((Array.isArray(parsed) ? { keys: parsed } : parsed) as JSONWebKeySet)
    : undefined;
  if (!hmac && !keySet) throw new Error("set SUPABASE_JWT_SECRET or SUPABASE_JWKS");
  return (header, token) => {
    if (header.alg === "HS256" && hmac) return hmac;
    if (header.alg !== "HS256" && keySet) return keySet(header, token);
    throw new joseErrors.JOSEAlgNotAllowed(`no key for ${header.alg}`);
  };
}

// Tokens verified before, until they expire, as PostgREST's JWT cache keeps them
// (jwt-cache-max-lifetime): an automation sends many requests with one token, and WebCrypto's
// signature check, run off the main thread, costs more than the rest of a request. Keyed by
// the whole token, signature included; emptied when full.
const verified = new Map<string, JWTPayload>();
const VERIFIED_MAX = 10_000;

async function verify(token: string): Promise<JWTPayload> {
  const known = verified.get(token);
  if (known && (known.exp as number) > Date.now() / 1000) return known;
  const { payload } = await jwtVerify(token, verifyKey, {
    algorithms: ["HS256", "ES256", "RS256"],
    requiredClaims: ["exp"],
  });
  if (verified.size >= VERIFIED_MAX) verified.clear();
  verified.set(token, payload);
  return payload;
}

// A refused token as PostgREST answers it, WWW-Authenticate included.
function invalidToken(code: string, message: string): Response {
  const challenge = `Bearer error="invalid_token", error_description=${JSON.stringify(message)}`;
  return failure(401, code, message, null, { "www-authenticate": challenge });
}

// PostgREST's JWT errors: PGRST302 no token, PGRST301 undecodable or badly signed, PGRST303
// claims refused.
async function authenticate(req: Request): Promise<JWTPayload | Response> {
  const header = req.headers.get("authorization") ?? "";
  const token = /^Bearer +(\S+)$/i.exec(header)?.[1];
  if (!token) {
    return failure(401, "PGRST302", "No bearer JWT in the Authorization header", null, {
      "www-authenticate": "Bearer",
    });
  }
  let claims: JWTPayload;
  try {
    claims = await verify(token);
  } catch (error) {
    if (error instanceof joseErrors.JWTExpired) return invalidToken("PGRST303", "JWT expired");
    if (error instanceof joseErrors.JWTClaimValidationFailed) {
      return invalidToken("PGRST303", error.message);
    }
    return invalidToken("PGRST301", "JWT cryptographic operation failed");
  }
  // No role claim is PostgREST's anonymous role, as on Supabase.
  claims.role ??= "anon";
  if (typeof claims.role !== "string" || !ROLES.has(claims.role)) {
    return invalidToken("PGRST303", "JWT role is not anon, authenticated or service_role");
  }
  return claims;
}

// A string as an SQL literal: E'' with backslashes and quotes doubled reads the same whatever
// standard_conforming_strings says (libpq's PQescapeLiteral rule). What is quoted here is a
// whitelisted role or JSON.stringify's output, which has no NUL (a NUL in a string is the
// escape \u0000, which PostgreSQL's json_to_record refuses).
function literal(text: string): string {
  return `E'${text.replaceAll("\\", "\\\\").replaceAll("'", "''")}'`;
}

// The request as PostgREST runs an RPC: the role and the claims set local to the transaction,
// then the call, whose arguments come out of the JSON body by json_to_record with the
// function's types (so a bad uuid or timestamp is PostgreSQL's 22P02 or 22007, as through
// PostgREST), each passed by name. Only whitelisted names reach the SQL text. The two
// statements go in one simple-protocol message: one round trip, one implicit transaction,
// rolled back whole by any error, as pgbench sends the same calls in the SQL benchmark.
function requestSql(
  claims: JWTPayload,
  fields: string[],
  types: Record<string, string>,
  many: boolean,
  body: string,
): string {
  const jwt = literal(JSON.stringify(claims));
  const columns = fields.map((f) => `${f} ${types[f]}`).join(", ");
  const args = fields.map((f) => `${f} => a.${f}`).join(", ");
  const from = `json_to_record(${literal(body)}::json) as a(${columns})`;
  const call = many
    ? `select coalesce(json_agg(m), '[]')::text as body
       from ${from}, public.send_to_groups(${args}) as m`
    : `select to_json(m)::text as body from ${from}, public.send_message(${args}) as m`;
  return `select set_config('role', ${literal(claims.role as string)}, true),
                 set_config('request.jwt.claims', ${jwt}, true),
                 set_config('request.jwt.claim.sub', coalesce(${jwt}::json ->> 'sub', ''), true);
          ${call}`;
}

// PostgREST's mapping of SQLSTATEs to HTTP statuses, for the codes a function call can raise:
// https://docs.postgrest.org/en/latest/references/errors.html ("HTTP Status Codes"), and
// mapSQLtoHTTP in PostgREST's src/PostgREST/Error.hs. PTxyz is xyz; 42501 is 403 with a JWT of
// a role other than anon and 401 without; anything not listed is 400.
const BY_CODE: Record<string, number> = {
  "21000": 500,
  "23503": 409,
  "23505": 409,
  "25006": 405,
  "42883": 404,
  "42P01": 404,
  "42P17": 500,
  "53400": 500,
  "57P01": 503,
  "P0001": 400,
};
const BY_CLASS: Record<string, number> = {
  "08": 503,
  "09": 500,
  "0L": 403,
  "0P": 403,
  "25": 500,
  "28": 403,
  "2D": 500,
  "38": 500,
  "39": 500,
  "3B": 500,
  "40": 500,
  "53": 503,
  "54": 500,
  "55": 500,
  "57": 500,
  "58": 500,
  "F0": 500,
  "HV": 500,
  "P0": 500,
  "XX": 500,
};

function httpStatus(code: string, role: string): number {
  if (/^PT[0-9]{3}$/.test(code)) {
    const status = Number(code.slice(2));
    return status >= 200 && status <= 599 ? status : 500;
  }
  if (code === "42501") return role === "anon" ? 401 : 403;
  return BY_CODE[code] ?? BY_CLASS[code.slice(0, 2)] ?? 400;
}

// The row(s) as JSON text, or PostgreSQL's refusal as PostgREST answers it.
async function run(statement: string, role: string): Promise<string | Response> {
  try {
    const [, rows] = await sql.unsafe(statement) as unknown as [unknown, { body: string }[]];
    return rows[0].body;
  } catch (error) {
    if (!(error instanceof postgres.PostgresError)) throw error;
    const answer: ErrorBody = {
      code: error.code,
      message: error.message,
      details: error.detail ?? null,
      hint: error.hint ?? null,
    };
    const status = httpStatus(error.code, role);
    const headers: HeadersInit = status === 401 ? { "www-authenticate": "Bearer" } : {};
    return json(status, JSON.stringify(answer), headers);
  }
}

async function handle(req: Request): Promise<Response> {
  if (!PATHS.has(new URL(req.url).pathname)) {
    return failure(404, "PGRST125", "Invalid path specified in request URL");
  }
  if (req.method !== "POST") {
    return failure(405, "PGRST117", `Unsupported HTTP method: ${req.method}`, null, {
      allow: "POST",
    });
  }
  const claims = await authenticate(req);
  if (claims instanceof Response) return claims;

  let input: unknown;
  try {
    input = JSON.parse(await req.text());
  } catch {
    return failure(400, "PGRST102", "Empty or invalid json");
  }
  if (typeof input !== "object" || input === null || Array.isArray(input)) {
    return failure(400, "PGRST102", "The body must be a JSON object");
  }
  const fields = Object.keys(input);
  const many = fields.includes("group_jids");
  if (many === fields.includes("group_jid")) {
    return failure(400, "PGRST102", "Give either group_jid or group_jids");
  }
  const types = many ? MANY_GROUPS : ONE_GROUP;
  const unknown = fields.filter((f) => !Object.hasOwn(types, f));
  if (unknown.length) {
    return failure(
      400,
      "PGRST102",
      `Unknown field: ${unknown.join(", ")}`,
      `Accepted: ${Object.keys(types).join(", ")}`,
    );
  }
  let result: string | Response;
  try {
    const statement = requestSql(claims, fields, types, many, JSON.stringify(input));
    result = await run(statement, claims.role as string);
  } catch (error) {
    // Not PostgreSQL's answer: the connection failed, as PostgREST's PGRST000 says.
    console.error(error);
    const details = error instanceof Error ? error.message : String(error);
    return failure(503, "PGRST000", "Database connection error", details);
  }
  return result instanceof Response ? result : json(202, result);
}

Deno.serve({
  port: Number(Deno.env.get("PORT") ?? 8000),
  hostname: Deno.env.get("HOST") ?? "0.0.0.0",
}, handle);
