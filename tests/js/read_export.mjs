// Reads a Hearth automerge export with the JavaScript automerge and prints
// what it says as one JSON export (docs/export.md: the same fields):
//
//   cd tests/js && npm ci && node read_export.mjs FILE.automerge
//
// It reads the document through its documented schema only, and strictly:
// a missing or extra field, or a value of another type than the schema
// gives it, is an error (exit 1, the reason on stderr), so that what
// tests/export.rs compares with the store is what the document says.

import { readFileSync } from "node:fs";
import * as Automerge from "@automerge/automerge";

class SchemaError extends Error {}

function describe(v) {
  return v === null ? "null" : Array.isArray(v) ? "a list" : typeof v;
}

// A string scalar, which automerge 3 hands out as an ImmutableString (a
// JavaScript string would be a text object, which the schema does not use).
function str(v, path) {
  if (Automerge.isImmutableString(v)) return v.toString();
  throw new SchemaError(`${path}: ${describe(v)}, not a string scalar`);
}

function strOrNull(v, path) {
  return v === null ? null : str(v, path);
}

// An unsigned integer, which automerge 3 hands out as a BigInt (a signed one
// or a float reads as a number). Times and versions fit in 53 bits: printed
// as JSON numbers.
function uint(v, path) {
  if (typeof v === "bigint" && v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  throw new SchemaError(`${path}: ${describe(v)} ${String(v)}, not an unsigned integer (of 53 bits)`);
}

function bool(v, path) {
  if (typeof v === "boolean") return v;
  throw new SchemaError(`${path}: ${describe(v)}, not a boolean`);
}

function list(v, path) {
  if (Array.isArray(v)) return v;
  throw new SchemaError(`${path}: ${describe(v)}, not a list`);
}

// A map, with exactly the keys `keys` when given.
function map(v, path, keys) {
  if (v === null || typeof v !== "object" || Array.isArray(v) || Automerge.isImmutableString(v)) {
    throw new SchemaError(`${path}: ${describe(v)}, not a map`);
  }
  if (keys) {
    const missing = keys.filter((k) => !(k in v));
    const extra = Object.keys(v).filter((k) => !keys.includes(k));
    if (missing.length || extra.length) {
      throw new SchemaError(`${path}: missing [${missing}], unexpected [${extra}]`);
    }
  }
  return v;
}

function entries(v, path, value) {
  return Object.fromEntries(Object.entries(map(v, path)).map(([k, x]) => [k, value(x, `${path}.${k}`)]));
}

function message(v, path) {
  const m = map(v, path, ["id", "author", "time_ms", "text", "reply_to", "edited", "deleted", "reactions"]);
  return {
    id: str(m.id, `${path}.id`),
    author: str(m.author, `${path}.author`),
    time_ms: uint(m.time_ms, `${path}.time_ms`),
    text: strOrNull(m.text, `${path}.text`),
    reply_to: strOrNull(m.reply_to, `${path}.reply_to`),
    edited: bool(m.edited, `${path}.edited`),
    deleted: bool(m.deleted, `${path}.deleted`),
    reactions: entries(m.reactions, `${path}.reactions`, (users, p) =>
      list(users, p).map((u, i) => str(u, `${p}[${i}]`)),
    ),
  };
}

function read(bytes) {
  const doc = map(Automerge.load(bytes), "ROOT", ["format", "version", "channel", "messages"]);
  const format = str(doc.format, "format");
  const version = uint(doc.version, "version");
  if (format !== "hearth-export" || version !== 1) {
    throw new SchemaError(`format ${format} version ${version}: this reader reads hearth-export version 1`);
  }
  const ch = map(doc.channel, "channel", ["id", "name", "exported_at_ms", "members"]);
  return {
    format,
    version,
    channel: {
      id: str(ch.id, "channel.id"),
      name: str(ch.name, "channel.name"),
      exported_at_ms: uint(ch.exported_at_ms, "channel.exported_at_ms"),
      members: entries(ch.members, "channel.members", str),
    },
    messages: list(doc.messages, "messages").map((m, i) => message(m, `messages[${i}]`)),
  };
}

if (process.argv.length !== 3) {
  console.error("usage: node read_export.mjs FILE.automerge");
  process.exit(2);
}
try {
  console.log(JSON.stringify(read(readFileSync(process.argv[2])), null, 2));
} catch (e) {
  console.error(`read_export: ${e instanceof SchemaError ? e.message : e.stack}`);
  process.exit(1);
}
