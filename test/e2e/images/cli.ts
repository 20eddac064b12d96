/**
 * Build (or find in the cache) the test node's images and print where they are:
 *   node test/e2e/images/cli.ts [test] [pause] [launcher] [node-base] [operator] [kubevirt-launcher] [kubevirt-containerdisk]   (default: all)
 * (the kubevirt-* images need KubeVirt's binaries: built on first use, test/e2e/kubevirt/binaries.ts)
 */
import { launcherImage, pauseImage, testImage, type BuiltImage } from './images.ts';
import { nodeBaseImage, operatorImage } from './operator.ts';
import { ensureKubevirtImages } from '../kubevirt/images.ts';

const builders: Record<string, () => Promise<BuiltImage>> = {
  test: testImage,
  pause: pauseImage,
  launcher: launcherImage,
  'node-base': nodeBaseImage,
  operator: () => operatorImage(),
  'kubevirt-launcher': async () => (await ensureKubevirtImages()).launcher,
  'kubevirt-containerdisk': async () => (await ensureKubevirtImages()).containerDisk,
};
const wanted = process.argv.slice(2);
for (const name of wanted.length > 0 ? wanted : Object.keys(builders)) {
  const build = builders[name];
  if (!build) {
    process.stderr.write(`unknown image ${name}; known: ${Object.keys(builders).join(', ')}\n`);
    process.exit(2);
  }
  const img = await build();
  process.stdout.write(
    `${name}\t${img.name}\t${img.archivePath}\t${img.cached ? 'cached' : 'built'} in ${(img.buildMs / 1000).toFixed(1)} s\n`,
  );
}
