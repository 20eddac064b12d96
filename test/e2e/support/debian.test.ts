import { describe, expect, it } from 'vitest';
import { debSrcLine, privateApt } from './debian.ts';

describe('private apt state (source packages of another suite)', () => {
  it("points every list, cache and source at the state dir, never the host's", () => {
    const apt = privateApt('/c/apt/trixie');
    expect(apt.sourcesList).toBe('/c/apt/trixie/sources.list');
    const opts = new Map<string, string>();
    for (let i = 0; i < apt.options.length; i += 2) {
      expect(apt.options[i]).toBe('-o');
      const [k = '', v = ''] = (apt.options[i + 1] ?? '').split('=');
      opts.set(k, v);
    }
    expect(opts.get('Dir::Etc::SourceList')).toBe('/c/apt/trixie/sources.list');
    expect(opts.get('Dir::Etc::SourceParts')).toBe('/c/apt/trixie/sources.list.d');
    expect(opts.get('Dir::State::Lists')).toBe('/c/apt/trixie/lists');
    expect(opts.get('Dir::Cache')).toBe('/c/apt/trixie/cache');
    expect(opts.has('Dir::State::status')).toBe(false);
  });
  it('writes a deb-src line for main, signed by the archive keyring', () => {
    expect(debSrcLine('http://mirror.example/debian', 'trixie')).toBe(
      'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian trixie main\n',
    );
  });
});
