import { describe, expect, it } from 'vitest';
import {
  canStart,
  canStop,
  chatChunk,
  fits,
  formatDuration,
  formatMiB,
  formatMs,
  minuteSeries,
  smallestFit,
  snippets,
  splitLines,
  sseData,
  type MinuteStats,
} from './deploy';

describe('deploy helpers', () => {
  it('picks the smallest size that fits the model', () => {
    const offer = {
      driver: 'ecs',
      compute_type: 'fargate' as const,
      sizes: [
        { cpu: 1, memory: [2048, 3072, 4096] },
        { cpu: 0.25, memory: [512, 1024] },
      ],
      gpu_instance_types: [],
      spot: true,
    };
    expect(smallestFit(offer, 512)).toEqual({ cpu: 0.25, memory: 512 });
    expect(smallestFit(offer, 3000)).toEqual({ cpu: 1, memory: 3072 });
    expect(smallestFit(offer, 9999)).toBeNull();
    expect(fits({ memory_required: 4096 }, 4096)).toBe(true);
    expect(fits({ memory_required: 4096 }, 2048)).toBe(false);
    expect(fits(undefined, 2048)).toBe(false);
  });
  it('formats sizes and durations', () => {
    expect(formatMiB(512)).toBe('512 MiB');
    expect(formatMiB(1536)).toBe('1.5 GiB');
    expect(formatMiB(4096)).toBe('4 GiB');
    expect(formatDuration(5)).toBe('5 s');
    expect(formatDuration(3725)).toBe('1 h 2 min');
    expect(formatDuration(1800)).toBe('30 min');
    expect(formatDuration(3725, 'ja')).toBe('1時間2分');
  });
  it('splits streamed text into complete lines', () => {
    expect(splitLines('a\nb\r\nc')).toEqual({ lines: ['a', 'b'], rest: 'c' });
    expect(splitLines('')).toEqual({ lines: [], rest: '' });
  });
  it('reads Ollama chat NDJSON and SSE data lines', () => {
    expect(chatChunk('{"message":{"role":"assistant","content":"Hi"},"done":false}')).toEqual({ text: 'Hi', done: false });
    expect(chatChunk('{"done":true,"message":{"content":""}}')).toEqual({ text: '', done: true });
    expect(() => chatChunk('{"error":"model not ready"}')).toThrow('model not ready');
    expect(sseData<{ line: string }>('data: {"line":"x"}')).toEqual({ line: 'x' });
    expect(sseData(': keep-alive')).toBeNull();
    expect(sseData('event: end')).toBeNull();
  });
  it('offers stop/start by status', () => {
    expect(canStop({ status: 'ready', desired: 'running' })).toBe(true);
    expect(canStop({ status: 'stopped', desired: 'stopped' })).toBe(false);
    expect(canStart({ status: 'stopped', desired: 'stopped' })).toBe(true);
    expect(canStart({ status: 'ready', desired: 'running' })).toBe(false);
  });
  it('writes snippets for the endpoint', () => {
    const s = snippets('https://c.example/i/abc', 'smollm2:135m');
    expect(s.openai).toContain('base_url="https://c.example/i/abc/v1"');
    expect(s.ollama).toContain('Client(host="https://c.example/i/abc", headers={"Authorization": "Bearer <your API key>"})');
    expect(s.curl).toContain('https://c.example/i/abc/api/chat');
  });
  it('charts per-minute latency over the minutes that had requests', () => {
    const minute = (requests: number, p50: number | null): MinuteStats => ({
      start: '2026-11-25T15:00:00Z',
      requests,
      errors: 0,
      latency_p50_ms: p50,
      latency_p95_ms: p50,
      first_token_p50_ms: null,
      first_token_p95_ms: null,
      tokens_out: 0,
    });
    const minutes = [minute(0, null), minute(3, 120), minute(0, null), minute(1, 80.5), minute(2, null)];
    expect(minuteSeries(minutes, (m) => m.latency_p50_ms)).toEqual([120, 80.5]);
    expect(minuteSeries(minutes, (m) => m.requests)).toEqual([3, 1, 2]);
    expect(minuteSeries([], (m) => m.requests)).toEqual([]);
    expect(formatMs(0.256)).toBe('0.26 ms');
    expect(formatMs(3.14)).toBe('3.1 ms');
    expect(formatMs(171.6)).toBe('172 ms');
    expect(formatMs(12_345)).toBe('12.3 s');
  });
});
