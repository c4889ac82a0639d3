// The deployment API's shapes (models, compute, instances, usage), aliases of the types
// generated from its OpenAPI document (see types.ts), and the small pure helpers the pages
// share (kept here so Vitest covers them without a browser).

import type { Schemas } from './types';

export type ComputeType = Schemas['ComputeType'];
/** The state the reconciler observed. */
export type Observed = Schemas['State'];
/** The state the owner asked for. */
export type Desired = Schemas['Desired'];
export type ModelSource = Schemas['ModelSource'];
export type PullView = Schemas['PullView'];
/** A catalog entry with whether its weights are on this machine and its pull's progress. */
export type CatalogModel = Schemas['ModelView'];
/** A vCPU count with the memory sizes (MiB) valid with it. */
export type ComputeSize = Schemas['CpuMemoryPair'];
export type GpuInstanceType = Schemas['GpuInstanceType'];
export type ComputeOffer = Schemas['ComputeOffer'];
export type ComputeSpec = Schemas['ComputeSpec'];
export type InstanceSettings = Schemas['InstanceSettings'];
export type Instance = Schemas['InstanceView'];
export type Replica = Schemas['ReplicaView'];
export type InstanceEvent = Schemas['InstanceEvent'];
export type UsageTotals = Schemas['UsageTotals'];
export type Cost = Schemas['Cost'];
export type InstanceDetail = Schemas['InstanceDetail'];
export type UsageGroup = Schemas['UsageGroup'];
export type UsageReport = Schemas['UsageReport'];
/** One minute of an instance's gateway requests (`GET /api/instances/{id}/metrics`). */
export type MinuteStats = Schemas['MinuteView'];
export type InstanceMetrics = Schemas['InstanceMetrics'];
export type LogLine = Schemas['LogLineView'];
export type LogsPage = Schemas['LogsPage'];
export type StartRequest = Schemas['StartModel'];

/**
 * A per-minute figure over the minutes that had requests (a minute without any has no
 * latency: drawing it as 0 would read as "instant"), oldest first.
 */
export function minuteSeries(minutes: MinuteStats[], pick: (m: MinuteStats) => number | null | undefined): number[] {
  return minutes.filter((m) => m.requests > 0).flatMap((m) => {
    const v = pick(m);
    // The document lets an absent figure be left out as well as be null.
    return v === null || v === undefined ? [] : [v];
  });
}

/** A latency in ms for display: µs-level precision below 10 ms, whole ms above, s above 10 s. */
export function formatMs(ms: number): string {
  if (ms >= 10_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms >= 10) return `${Math.round(ms)} ms`;
  return `${ms.toFixed(ms >= 1 ? 1 : 2)} ms`;
}

// ---- helpers -----------------------------------------------------------------------

/** The lifecycle steps a deploy goes through, in order. */
export const LIFECYCLE: readonly Observed[] = ['pending', 'provisioning', 'starting', 'ready'];

/** Statuses in which the instance is on its way up or serving. */
export function isActive(s: Observed): boolean {
  return s !== 'stopped' && s !== 'failed' && s !== 'sleeping';
}

export function canStart(i: Pick<Instance, 'status' | 'desired'>): boolean {
  return i.status === 'stopped' || i.status === 'sleeping' || i.status === 'failed' || i.desired === 'stopped';
}

export function canStop(i: Pick<Instance, 'status' | 'desired'>): boolean {
  return i.desired === 'running' && i.status !== 'stopped' && i.status !== 'stopping';
}

export type StatusColor = 'success' | 'warning' | 'error' | 'default' | 'info';
export function statusColor(s: Observed): StatusColor {
  if (s === 'ready') return 'success';
  if (s === 'failed') return 'error';
  if (s === 'stopped') return 'default';
  if (s === 'sleeping') return 'info';
  return 'warning';
}

/** MiB as the UI shows it: 512 MiB, 1 GiB, 1.5 GiB. */
export function formatMiB(mib: number): string {
  if (mib < 1024) return `${mib} MiB`;
  const g = mib / 1024;
  return `${Number.isInteger(g) ? g : g.toFixed(1)} GiB`;
}

export function formatBytes(b: number | null | undefined): string {
  if (b === null || b === undefined) return '—';
  if (b < 1024 * 1024) return `${Math.round(b / 1024)} KiB`;
  if (b < 1024 ** 3) return `${(b / 1024 / 1024).toFixed(b < 10 * 1024 * 1024 ? 1 : 0)} MiB`;
  return `${(b / 1024 ** 3).toFixed(1)} GiB`;
}

const UNITS = {
  en: { s: ' s', min: ' min', h: ' h', d: ' d', sep: ' ' },
  ja: { s: '秒', min: '分', h: '時間', d: '日', sep: '' },
} as const;

/** 3 s, 4 min 5 s, 2 h 3 min, 1 d 2 h (ja: 3秒, 4分5秒, 2時間3分, 1日2時間). */
export function formatDuration(sec: number, lang: 'en' | 'ja' = 'en'): string {
  const u = UNITS[lang];
  const s = Math.max(0, Math.floor(sec));
  if (s < 60) return `${s}${u.s}`;
  const two = (a: number, ua: string, b: number, ub: string) => (b ? `${a}${ua}${u.sep}${b}${ub}` : `${a}${ua}`);
  if (s < 3600) return two(Math.floor(s / 60), u.min, s % 60, u.s);
  if (s < 86400) return two(Math.floor(s / 3600), u.h, Math.floor((s % 3600) / 60), u.min);
  return two(Math.floor(s / 86400), u.d, Math.floor((s % 86400) / 3600), u.h);
}

export function formatUsd(usd: number | null | undefined): string {
  if (usd === null || usd === undefined) return '—';
  if (usd === 0) return '$0.00';
  if (usd < 0.01) return `$${usd.toFixed(4)}`;
  return `$${usd.toFixed(2)}`;
}

/** Whether a size fits the model: memory at least what it needs. */
export function fits(model: Pick<CatalogModel, 'memory_required'> | undefined, memoryMiB: number | undefined): boolean {
  return !!model && memoryMiB !== undefined && memoryMiB >= model.memory_required;
}

/** The smallest size (vCPU, memory) of an offer that fits the model. */
export function smallestFit(offer: ComputeOffer, need: number): { cpu: number; memory: number } | null {
  for (const size of [...offer.sizes].sort((a, b) => a.cpu - b.cpu)) {
    const m = [...size.memory].sort((a, b) => a - b).find((x) => x >= need);
    if (m !== undefined) return { cpu: size.cpu, memory: m };
  }
  return null;
}

/**
 * Splits a growing text buffer into complete lines; returns them and the unfinished
 * rest, for reading NDJSON and SSE from a ReadableStream.
 */
export function splitLines(buffer: string): { lines: string[]; rest: string } {
  const parts = buffer.split('\n');
  const rest = parts.pop() ?? '';
  return { lines: parts.map((l) => l.replace(/\r$/, '')), rest };
}

/** The token text of one Ollama chat NDJSON line ('' for none); throws on an error line. */
export function chatChunk(line: string): { text: string; done: boolean } {
  if (!line.trim()) return { text: '', done: false };
  const obj = JSON.parse(line) as { message?: { content?: string }; done?: boolean; error?: string | { message?: string } };
  if (obj.error) throw new Error(typeof obj.error === 'string' ? obj.error : (obj.error.message ?? 'error'));
  return { text: obj.message?.content ?? '', done: !!obj.done };
}

/** The JSON payload of an SSE `data:` line, or null for other lines (comments, events). */
export function sseData<T>(line: string): T | null {
  if (!line.startsWith('data:')) return null;
  const payload = line.slice(5).trimStart();
  if (!payload) return null;
  try {
    return JSON.parse(payload) as T;
  } catch {
    return null;
  }
}

/** Reads a stream of lines, calling `onLine` for each complete one. */
export async function readLines(body: ReadableStream<Uint8Array>, onLine: (line: string) => void): Promise<void> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const { lines, rest } = splitLines(buffer);
    buffer = rest;
    for (const l of lines) onLine(l);
  }
  buffer += decoder.decode();
  if (buffer) onLine(buffer);
}

export const SNIPPET_MODEL_PLACEHOLDER = '<your API key>';

export function snippets(endpoint: string, model: string): { curl: string; openai: string; ollama: string } {
  const key = SNIPPET_MODEL_PLACEHOLDER;
  return {
    curl: `curl ${endpoint}/api/chat \\
  -H "Authorization: Bearer ${key}" \\
  -d '{"model": "${model}", "messages": [{"role": "user", "content": "Hello!"}]}'

# OpenAI-compatible
curl ${endpoint}/v1/chat/completions \\
  -H "Authorization: Bearer ${key}" -H "Content-Type: application/json" \\
  -d '{"model": "${model}", "messages": [{"role": "user", "content": "Hello!"}]}'`,
    openai: `from openai import OpenAI

client = OpenAI(base_url="${endpoint}/v1", api_key="${key}")
stream = client.chat.completions.create(
    model="${model}",
    messages=[{"role": "user", "content": "Hello!"}],
    stream=True,
)
for chunk in stream:
    print(chunk.choices[0].delta.content or "", end="", flush=True)`,
    ollama: `from ollama import Client

client = Client(host="${endpoint}", headers={"Authorization": "Bearer ${key}"})
for part in client.chat(model="${model}", messages=[{"role": "user", "content": "Hello!"}], stream=True):
    print(part["message"]["content"], end="", flush=True)`,
  };
}
