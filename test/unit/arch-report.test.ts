import { describe, expect, it } from 'vitest';
import {
  backArrows,
  buildGraph,
  cycles,
  floorOf,
  functionLengths,
  importsOf,
  roomOf,
  spawnSites,
} from '../../scripts/arch-report.ts';

describe('arch-report', () => {
  it('places files on floors, tests with the file they test', () => {
    expect(floorOf('api/types.ts')).toBeLessThan(floorOf('controller/decide.ts'));
    expect(floorOf('kube/metrics.ts')).toBeLessThan(floorOf('kubevirt/launcher.ts'));
    expect(floorOf('config.test.ts')).toBe(floorOf('main.ts'));
    expect(floorOf('nowhere/x.ts')).toBe(-1);
    expect(roomOf('controller/decide.ts')).toBe('controller');
    expect(roomOf('main.ts')).toBe('(top)');
  });

  it('finds relative imports, arrows back up and cycles', () => {
    expect(
      importsOf(
        'a.ts',
        "import { x } from './b.ts';\nexport * from '../c.ts';\nimport z from 'zod';\nconst m = await import('./d.ts');",
      ),
    ).toEqual(['./b.ts', '../c.ts', 'zod', './d.ts']);
    const g = buildGraph(
      new Map([
        ['kube/metrics.ts', "import { q } from '../controller/workqueue.ts';"],
        ['controller/workqueue.ts', "import { m } from '../kube/metrics.ts';"],
        ['api/types.ts', "import 'zod';"],
        ['controller/decide.ts', "import { t } from '../api/types.ts';"],
      ]),
    );
    expect(backArrows(g)).toEqual([{ from: 'kube/metrics.ts', to: 'controller/workqueue.ts' }]);
    expect(cycles(g)).toEqual([['controller/workqueue.ts', 'kube/metrics.ts']]);
    expect(
      cycles(
        buildGraph(
          new Map([
            ['a.ts', "import './b.ts';"],
            ['b.ts', ''],
          ]),
        ),
      ),
    ).toEqual([]);
  });

  it('places the plugin on its own floor, right above api: it may import api, nothing above, and nothing imports it', () => {
    expect(floorOf('plugin/src/cli.ts')).toBe(floorOf('api/types.ts') + 1);
    expect(floorOf('operator/src/api/types.ts')).toBe(floorOf('api/types.ts'));
    expect(floorOf('operator/src/controller/decide.ts')).toBe(floorOf('controller/decide.ts'));
    const g = buildGraph(
      new Map([
        [
          'plugin/src/cli.ts',
          "import { t } from '../../operator/src/api/types.ts';\nimport { d } from '../../operator/src/controller/decide.ts';\nimport { r } from './render.ts';",
        ],
        [
          'plugin/src/render.ts',
          "import { q } from '../../operator/src/api/quantity.ts';\nimport { c } from '../../operator/src/kube/client.ts';",
        ],
        ['operator/src/api/types.ts', ''],
        ['operator/src/api/quantity.ts', ''],
        ['operator/src/kube/client.ts', ''],
        ['operator/src/controller/decide.ts', "import { r } from '../../../plugin/src/render.ts';"],
      ]),
    );
    expect(backArrows(g)).toEqual([
      { from: 'operator/src/controller/decide.ts', to: 'plugin/src/render.ts' },
      { from: 'plugin/src/cli.ts', to: 'operator/src/controller/decide.ts' },
      { from: 'plugin/src/render.ts', to: 'operator/src/kube/client.ts' },
    ]);
  });

  it('keeps the policy controller and the BlockPull controller apart: same floor, no import either way', () => {
    expect(floorOf('policy/decide.ts')).toBe(floorOf('controller/decide.ts'));
    expect(floorOf('policy/decide.ts')).toBeGreaterThan(floorOf('kube/workqueue.ts'));
    expect(floorOf('policy/decide.ts')).toBeLessThan(floorOf('main.ts'));
    const g = buildGraph(
      new Map([
        ['policy/decide.ts', "import { d } from '../controller/decide.ts';\nimport { w } from '../kube/workqueue.ts';"],
        ['policy/act.ts', "import { x } from './decide.ts';"],
        ['controller/decide.ts', "import { p } from '../policy/act.ts';"],
        ['kube/workqueue.ts', ''],
        ['main.ts', "import { p } from './policy/act.ts';\nimport { c } from './controller/decide.ts';"],
      ]),
    );
    expect(backArrows(g)).toEqual([
      { from: 'controller/decide.ts', to: 'policy/act.ts' },
      { from: 'policy/decide.ts', to: 'controller/decide.ts' },
    ]);
  });

  it('measures functions and names methods by their class', () => {
    const fns = functionLengths(
      'f.ts',
      'class A {\n  m(): void {\n    return;\n  }\n}\nconst f = () => {\n  return 1;\n};\nfunction g() {}\n',
    );
    expect(fns.map((f) => [f.name, f.lines])).toEqual([
      ['A.m', 3],
      ['f', 3],
      ['g', 1],
    ]);
  });

  it('counts child_process calls, by name, namespace and promisify, and nothing else', () => {
    const text = [
      "import { spawn, execFile as ef } from 'node:child_process';",
      "import * as cp from 'node:child_process';",
      "import { promisify } from 'node:util';",
      'const run = promisify(ef);',
      "spawn('a', []);",
      "await run('b', []);",
      "cp.spawnSync('c', []);",
      "exec('d');",
    ].join('\n');
    expect(spawnSites('x.ts', text).map((s) => s.call)).toEqual(['spawn', 'run', 'cp.spawnSync']);
    expect(spawnSites('y.ts', "import { exec } from '@kubernetes/client-node';\nexec('x');")).toEqual([]);
  });
});
