import { defineConfig } from 'vitest/config';

// Two projects: fast unit tests (no services), and end-to-end tests that start real
// daemons (kube-apiserver, etcd, libvirtd, QEMU). The e2e project runs its files one at a
// time: the machines have 2 cores and the daemons are heavy.
export default defineConfig({
  test: {
    // Global setup teardown stops the control plane: give it time to drain.
    teardownTimeout: 120_000,
    projects: [
      {
        test: {
          name: 'unit',
          include: [
            'operator/**/*.test.ts',
            'plugin/**/*.test.ts',
            'test/unit/**/*.test.ts',
            'test/e2e/cluster/**/*.test.ts',
            'test/e2e/support/**/*.test.ts',
            'test/e2e/kubevirt/**/*.test.ts',
            'test/e2e/images/**/*.test.ts',
          ],
          exclude: ['**/node_modules/**', '**/*.e2e.test.ts'],
          environment: 'node',
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/e2e/**/*.e2e.test.ts'],
          globalSetup: ['test/e2e/setup/global-setup.ts'],
          environment: 'node',
          fileParallelism: false,
          testTimeout: 300_000,
          hookTimeout: 1_800_000,
        },
      },
    ],
  },
});
