// One file, two uses:
//  - compiled into MoFO.Core (MOFO_CORE defined): ElfVersionNeeds reads and patches the version requirements of an ELF
//    library, for `mofo info` and the tests;
//  - compiled by MSBuild's RoslynCodeTaskFactory as the inline task PatchLibTorchSharp (Directory.Build.targets), which
//    the build runs on its own output. That compilation targets netstandard2.0, so this file uses only its APIs.
//
// Why (DESIGN.md, "Native loading on this platform"): libLibTorchSharp.so 0.107.0 is linked with GCC 13, which records a
// requirement on GLIBCXX_3.4.32 only for std::ios_base_library_init(); no relocation uses that symbol. The dynamic loader
// refuses a library whose required version the system libstdc++ lacks (GCC 12 on Debian 12), unless that Vernaux entry
// carries VER_FLG_WEAK (2). The task sets that flag in the build output's copy — never in the NuGet cache: the patched
// bytes go to a temp file that replaces the output path, which also breaks any hard link the copy step made — and only
// where the system libstdc++ lacks the version.
#nullable disable
using System;
using System.Collections.Generic;
using System.IO;
using System.Runtime.InteropServices;
using System.Text;

namespace MoFO.Native
{
    /// <summary>One entry of an ELF library's version requirements (.gnu.version_r): library, version name, flags.</summary>
    public sealed class ElfVersionNeed
    {
        public string Library { get; set; }
        public string Version { get; set; }
        public ushort Flags { get; set; }
        /// <summary>Byte offset of the entry's vna_flags field in the file.</summary>
        public int FlagsOffset { get; set; }
        public bool Weak => (Flags & ElfVersionNeeds.VerFlgWeak) != 0;
    }

    /// <summary>Reads and patches the version requirements (SHT_GNU_verneed) of a 64-bit little-endian ELF file.</summary>
    public static class ElfVersionNeeds
    {
        public const string TorchSharpBridgeVersion = "GLIBCXX_3.4.32";
        public const ushort VerFlgWeak = 2;
        const uint ShtGnuVerneed = 0x6ffffffe;

        /// <summary>All Vernaux entries of the file; throws <see cref="InvalidDataException"/> naming the problem for a non-ELF64-LE file.</summary>
        public static List<ElfVersionNeed> Read(byte[] elf, string fileName = "input")
        {
            if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != (byte)'E' || elf[2] != (byte)'L' || elf[3] != (byte)'F')
                throw new InvalidDataException(fileName + ": not an ELF file (bad magic)");
            if (elf[4] != 2 || elf[5] != 1)
                throw new InvalidDataException(fileName + ": only 64-bit little-endian ELF is supported (EI_CLASS=" + elf[4] + ", EI_DATA=" + elf[5] + ")");
            var result = new List<ElfVersionNeed>();
            long shoff = (long)BitConverter.ToUInt64(elf, 0x28);
            int shentsize = BitConverter.ToUInt16(elf, 0x3A);
            int shnum = BitConverter.ToUInt16(elf, 0x3C);
            if (shoff <= 0 || shoff + (long)shnum * shentsize > elf.Length)
                throw new InvalidDataException(fileName + ": section header table (e_shoff=" + shoff + ", e_shnum=" + shnum + ") lies outside the file");
            for (int i = 0; i < shnum; i++)
            {
                int sh = checked((int)(shoff + (long)i * shentsize));
                if (BitConverter.ToUInt32(elf, sh + 4) != ShtGnuVerneed) continue;
                int offset = checked((int)BitConverter.ToUInt64(elf, sh + 0x18));
                int link = (int)BitConverter.ToUInt32(elf, sh + 0x28);
                int count = (int)BitConverter.ToUInt32(elf, sh + 0x2C);
                int strtab = checked((int)BitConverter.ToUInt64(elf, checked((int)(shoff + (long)link * shentsize)) + 0x18));
                int vn = offset;
                for (int n = 0; n < count; n++)
                {
                    int cnt = BitConverter.ToUInt16(elf, vn + 2);
                    string library = CString(elf, strtab + (int)BitConverter.ToUInt32(elf, vn + 4));
                    int aux = vn + (int)BitConverter.ToUInt32(elf, vn + 8);
                    for (int a = 0; a < cnt; a++)
                    {
                        result.Add(new ElfVersionNeed
                        {
                            Library = library,
                            Version = CString(elf, strtab + (int)BitConverter.ToUInt32(elf, aux + 8)),
                            Flags = BitConverter.ToUInt16(elf, aux + 4),
                            FlagsOffset = aux + 4,
                        });
                        aux += (int)BitConverter.ToUInt32(elf, aux + 12);
                    }
                    vn += (int)BitConverter.ToUInt32(elf, vn + 12);
                }
            }
            return result;
        }

        /// <summary>Sets VER_FLG_WEAK on the requirement named <paramref name="version"/>. Returns false when it was already weak;
        /// throws when the file has no such requirement.</summary>
        public static bool MarkWeak(byte[] elf, string version, string fileName = "input")
        {
            foreach (var need in Read(elf, fileName))
            {
                if (need.Version != version) continue;
                if (need.Weak) return false;
                var patched = BitConverter.GetBytes((ushort)(need.Flags | VerFlgWeak));
                elf[need.FlagsOffset] = patched[0];
                elf[need.FlagsOffset + 1] = patched[1];
                return true;
            }
            throw new InvalidDataException(fileName + ": has no version requirement " + version);
        }

        /// <summary>Whether the library's bytes define the version (its name appears NUL-terminated in the file).</summary>
        public static bool Defines(byte[] library, string version)
        {
            var needle = Encoding.ASCII.GetBytes(version + "\0");
            for (int i = 0; i + needle.Length <= library.Length; i++)
            {
                if (library[i] != needle[0]) continue;
                int j = 1;
                while (j < needle.Length && library[i + j] == needle[j]) j++;
                if (j == needle.Length) return true;
            }
            return false;
        }

        /// <summary>The system's libstdc++.so.6, or null.</summary>
        public static string FindSystemLibStdCxx()
        {
            foreach (var dir in new[] { "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/lib/x86_64-linux-gnu", "/usr/lib" })
            {
                var p = Path.Combine(dir, "libstdc++.so.6");
                if (File.Exists(p)) return p;
            }
            return null;
        }

        /// <summary>Whether the system libstdc++ lacks the version that TorchSharp's bridge requires (so the patch is needed).</summary>
        public static bool SystemNeedsPatch()
        {
            if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux)) return false;
            var lib = FindSystemLibStdCxx();
            return lib != null && !Defines(File.ReadAllBytes(lib), TorchSharpBridgeVersion);
        }

        static string CString(byte[] bytes, int at)
        {
            int end = Array.IndexOf(bytes, (byte)0, at);
            if (end < 0) throw new InvalidDataException("unterminated string at offset " + at);
            return Encoding.ASCII.GetString(bytes, at, end - at);
        }
    }
}

#if !MOFO_CORE
/// <summary>MSBuild task: patches every libLibTorchSharp.so under OutputDirectory where the system needs it.</summary>
public class PatchLibTorchSharp : Microsoft.Build.Utilities.Task
{
    [Microsoft.Build.Framework.Required] public string OutputDirectory { get; set; }

    public override bool Execute()
    {
        if (!MoFO.Native.ElfVersionNeeds.SystemNeedsPatch() || !Directory.Exists(OutputDirectory)) return true;
        foreach (var lib in Directory.EnumerateFiles(OutputDirectory, "libLibTorchSharp.so", SearchOption.AllDirectories))
        {
            try
            {
                var bytes = File.ReadAllBytes(lib);
                if (!MoFO.Native.ElfVersionNeeds.MarkWeak(bytes, MoFO.Native.ElfVersionNeeds.TorchSharpBridgeVersion, lib)) continue;
                var stamp = File.GetLastWriteTimeUtc(lib);
                var tmp = lib + ".patch-tmp";
                File.WriteAllBytes(tmp, bytes);
                File.Delete(lib);
                File.Move(tmp, lib);
                // Keep the source's timestamp so that incremental copies see an unchanged file.
                File.SetLastWriteTimeUtc(lib, stamp);
                Log.LogMessage(Microsoft.Build.Framework.MessageImportance.High,
                    "PatchLibTorchSharp: marked " + MoFO.Native.ElfVersionNeeds.TorchSharpBridgeVersion + " weak in " + lib + " (the system libstdc++ lacks it)");
            }
            catch (Exception e)
            {
                Log.LogError("PatchLibTorchSharp: cannot patch " + lib + ": " + e.Message);
            }
        }
        return !Log.HasLoggedErrors;
    }
}
#endif
