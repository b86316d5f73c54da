import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// base './': the built dist/ works from any folder of any static server.
export default defineConfig({
  base: './',
  plugins: [react()],
});
