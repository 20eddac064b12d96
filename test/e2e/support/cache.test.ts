import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cacheRoot } from './cache.ts';

describe('cacheRoot', () => {
  it('defaults to ~/.cache/blockpull-operator (also for an empty override)', () => {
    const def = path.join(os.homedir(), '.cache', 'blockpull-operator');
    expect(cacheRoot({})).toBe(def);
    expect(cacheRoot({ BLOCKPULL_CACHE_DIR: '' })).toBe(def);
  });

  it('takes BLOCKPULL_CACHE_DIR, made absolute', () => {
    expect(cacheRoot({ BLOCKPULL_CACHE_DIR: '/srv/cache' })).toBe('/srv/cache');
    expect(cacheRoot({ BLOCKPULL_CACHE_DIR: 'rel/cache' })).toBe(path.resolve('rel/cache'));
  });
});
